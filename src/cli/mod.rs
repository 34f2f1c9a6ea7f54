//! The command line: parse, then hand off. Exit codes: 0 ok, 1 runtime failure, 2 bad
//! config or usage.

mod ca;
mod clients;
mod commands;
mod completions;
mod daemon;
mod init;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{self, Config, ConfigError};
use daemon::Reach;

/// Which tokenproxy a one-shot command talks to.
#[derive(Debug, clap::Args)]
struct DaemonUrl {
    /// Talk to the tokenproxy at this URL (e.g. http://127.0.0.1:8080, the one `tokenproxy
    /// demo` prints) instead of the one the config names; no config is read.
    #[arg(long, env = "TOKENPROXY_URL", value_name = "URL")]
    url: Option<String>,
}

/// The commands whose first argument is an upstream's name, which completions offer.
const NAMED_COMMANDS: &[&str] = &["login", "logout", "token", "header", "curl"];

/// How a one-shot command failed, and so its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// Not usable as asked (an unknown upstream, a file in the way): exit 2.
    #[error("{0}")]
    Usage(String),
    /// No config to read (and no tokenproxy at the default address): exit 2.
    #[error("config error: {0}")]
    Config(String),
    /// The command ran and failed (unreachable, refused, timed out): exit 1.
    #[error("{0}")]
    Failed(String),
}

impl From<String> for CommandError {
    fn from(message: String) -> Self {
        CommandError::Failed(message)
    }
}

impl CommandError {
    fn exit_code(&self) -> ExitCode {
        match self {
            CommandError::Usage(_) | CommandError::Config(_) => ExitCode::from(2),
            CommandError::Failed(_) => ExitCode::FAILURE,
        }
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "tokenproxy",
    version,
    about = "A local authenticating reverse proxy: point curl at http://127.0.0.1:8080/<upstream>/... \
             and every request reaches the vendor with a live token.",
    after_help = "Config is looked up in: --config FILE, $TOKENPROXY_CONFIG (a path), \
                  $TOKENPROXY_CONFIG_TOML (the whole config), ./tokenproxy.toml, \
                  $XDG_CONFIG_HOME/tokenproxy/config.toml; `tokenproxy init` writes a starter one.\nLogs go to stderr; set TOKENPROXY_LOG \
                  (e.g. debug, or tokenproxy=debug) to change how much."
)]
pub struct Cli {
    /// Config file to use instead of the lookup order.
    #[arg(long, short, global = true, value_name = "FILE")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve (the default): forward requests with live tokens until SIGTERM or Ctrl-C.
    Run {
        /// Listen here instead of server.listen: 127.0.0.1:9000, localhost:9000, or a port.
        #[arg(long, env = "TOKENPROXY_LISTEN", value_name = "ADDR", value_parser = listen_address)]
        listen: Option<String>,
    },
    /// Validate the config and exit: 0 if it is good, 2 with a one-line error if not.
    Check,
    /// Serve every vendor on built-in simulated endpoints: try it with no vendor account.
    #[cfg(feature = "demo")]
    Demo {
        /// Where the demo proxy listens: 127.0.0.1:9000, localhost:9000, or a port.
        #[arg(long, env = "TOKENPROXY_LISTEN", default_value = config::DEFAULT_LISTEN, value_name = "ADDR", value_parser = config::listen_address)]
        listen: std::net::SocketAddr,
        /// Leave BigAnimal logged out: log in from the status page (or `tokenproxy login
        /// biganimal`) and approve the code at the simulator's page yourself.
        #[arg(long)]
        manual_login: bool,
    },
    /// Log in to an upstream: show a device code, or open the vendor's login page; kinds
    /// that need no user get a token now. Takes effect in a running daemon at once.
    Login {
        /// The upstream, as named in the config.
        name: String,
        /// Print the URL instead of opening a browser.
        #[arg(long)]
        no_browser: bool,
        #[command(flatten)]
        daemon: DaemonUrl,
    },
    /// Forget an upstream's tokens, revoking them where the vendor can (AMM).
    Logout {
        /// The upstream, as named in the config.
        name: String,
        #[command(flatten)]
        daemon: DaemonUrl,
    },
    /// Show each upstream's kind, token state, expiry, last refresh and last error. Never a
    /// token.
    Status {
        /// Print JSON (the same as GET /-/status) instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        daemon: DaemonUrl,
    },
    /// Write a commented starter config (one section per vendor).
    Init {
        /// Where to write it (default: $XDG_CONFIG_HOME/tokenproxy/config.toml).
        #[arg(long, value_name = "FILE")]
        path: Option<PathBuf>,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Exit 0 if the running tokenproxy answers /-/health (a container's HEALTHCHECK).
    Health {
        /// Ask this URL instead of the configured listen address.
        #[arg(long, value_name = "URL")]
        url: Option<String>,
    },
    /// Run curl against an upstream with its token headers:
    /// tokenproxy curl bigeval /api/v1/testcases -s
    Curl {
        /// The upstream, as named in the config.
        name: String,
        /// The path on the upstream's target.
        path: String,
        /// Further arguments for curl.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Print shell completions, which also complete upstream names:
    /// tokenproxy completions bash > ~/.local/share/bash-completion/completions/tokenproxy
    Completions { shell: clap_complete::Shell },
    /// Print the upstream names, one a line (what shell completions offer).
    Upstreams {
        #[command(flatten)]
        daemon: DaemonUrl,
    },
    /// Egress mode's local CA, which can sign only for the upstreams' hosts.
    Ca {
        #[command(subcommand)]
        action: CaCommand,
    },
    /// Print the `export` lines that send a shell's clients through egress mode:
    /// eval "$(tokenproxy env)"
    Env,
    /// Print a valid token for scripts, refreshing it first if needed:
    /// curl -H "Authorization: Bearer $(tokenproxy token NAME)" ...
    Token {
        /// The upstream, as named in the config.
        name: String,
        #[command(flatten)]
        daemon: DaemonUrl,
    },
    /// Print every header tokenproxy sends to an upstream (Authorization, CAEPE's
    /// Organization, static headers) as `Name: value` lines: curl -H @<(tokenproxy header NAME) ...
    Header {
        /// The upstream, as named in the config.
        name: String,
        /// Print curl arguments instead: -H 'Name: value' -H ...
        #[arg(long)]
        curl: bool,
        #[command(flatten)]
        daemon: DaemonUrl,
    },
    /// Named client keys, each limited to some upstreams, methods and paths.
    Client {
        #[command(subcommand)]
        action: ClientCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ClientCommand {
    /// Make a key for a new client, print it once, and add its hash to the config (comments
    /// kept): KEY=$(tokenproxy client add ci --upstream bigid --read-only)
    Add {
        /// The client's name: a-z, 0-9, '-' and '_'.
        name: String,
        /// An upstream it may use (repeat for more; "*" for every one).
        #[arg(long = "upstream", value_name = "NAME", required = true)]
        upstreams: Vec<String>,
        /// Only GET and HEAD.
        #[arg(long, conflicts_with = "methods")]
        read_only: bool,
        /// A method it may send (repeat for more); default any.
        #[arg(long = "method", value_name = "METHOD")]
        methods: Vec<String>,
        /// A path pattern it may reach, as forwarded (repeat for more): /api/v1/items/*,
        /// /reports/**; default any.
        #[arg(long = "path", value_name = "PATTERN")]
        paths: Vec<String>,
        /// May also use the /-/ endpoints (status, metrics, actions).
        #[arg(long)]
        admin: bool,
    },
    /// Show each client's name and policy; never a key.
    List,
    /// Remove a client from the config: its key stops working at the next reload.
    Remove { name: String },
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Create the CA in [egress] ca_dir (key 0600), limited to the upstreams' target hosts,
    /// and write its bundle.
    Init {
        /// Replace an existing CA (clients must then trust the new one).
        #[arg(long)]
        force: bool,
    },
    /// Write the system's roots plus this CA as one PEM (default: bundle.pem in ca_dir),
    /// for clients that replace their trust store (SSL_CERT_FILE).
    Bundle {
        /// Where to write it.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match cli.command.unwrap_or(Command::Run { listen: None }) {
        Command::Check => match load(cli.config.as_deref()) {
            Ok(config) => {
                for warning in config.warnings() {
                    eprintln!("tokenproxy: warning: {warning}");
                }
                println!(
                    "{}: ok, {} upstream{}",
                    config.source,
                    config.upstreams.len(),
                    if config.upstreams.len() == 1 { "" } else { "s" }
                );
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Run { listen } => {
            let overrides = config::Overrides { listen };
            match load_with(cli.config.as_deref(), &overrides) {
                Ok(config) => block_on(serve(config)),
                Err(code) => code,
            }
        }
        #[cfg(feature = "demo")]
        Command::Demo {
            listen,
            manual_login,
        } => block_on(crate::demo::run(listen, manual_login)),
        Command::Login {
            name,
            no_browser,
            daemon,
        } => with_reach(cli.config.as_deref(), daemon, |reach| {
            commands::login(reach, name, !no_browser)
        }),
        Command::Logout { name, daemon } => with_reach(cli.config.as_deref(), daemon, |reach| {
            commands::logout(reach, name)
        }),
        Command::Status { json, daemon } => with_reach(cli.config.as_deref(), daemon, |reach| {
            commands::status(reach, json)
        }),
        Command::Init { path, force } => {
            let Some(path) = path.or_else(config::default_config_file) else {
                eprintln!("tokenproxy: neither $XDG_CONFIG_HOME nor $HOME is set; pass --path");
                return ExitCode::from(2);
            };
            match init::write(&path, force) {
                Ok(()) => {
                    println!(
                        "wrote {}; edit it, then `tokenproxy check` and `tokenproxy run`",
                        path.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("tokenproxy: {error}");
                    error.exit_code()
                }
            }
        }
        Command::Health { url } => block_on(commands::health(url, cli.config)),
        Command::Curl { name, path, args } => with_config(cli.config.as_deref(), |config| {
            commands::curl(config, name, path, args)
        }),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "tokenproxy", &mut script);
            let script = completions::with_upstream_names(
                shell,
                &String::from_utf8_lossy(&script),
                NAMED_COMMANDS,
            );
            // A closed pipe (`| head`) is not worth a panic.
            let _ = std::io::Write::write_all(&mut std::io::stdout(), script.as_bytes());
            ExitCode::SUCCESS
        }
        Command::Upstreams { daemon } => {
            with_reach(cli.config.as_deref(), daemon, commands::upstreams)
        }
        Command::Ca { action } => match load(cli.config.as_deref()) {
            Ok(config) => match action {
                CaCommand::Init { force } => ca::init(&config, force),
                CaCommand::Bundle { out } => ca::bundle(&config, out.as_deref()),
            },
            Err(code) => code,
        },
        Command::Env => match load(cli.config.as_deref()) {
            Ok(config) => ca::env(&config),
            Err(code) => code,
        },
        Command::Token { name, daemon } => with_reach(cli.config.as_deref(), daemon, |reach| {
            commands::token(reach, name)
        }),
        Command::Header { name, curl, daemon } => {
            with_reach(cli.config.as_deref(), daemon, |reach| {
                commands::header(reach, name, curl)
            })
        }
        Command::Client { action } => client(cli.config.as_deref(), action),
    }
}

fn client(explicit: Option<&std::path::Path>, action: ClientCommand) -> ExitCode {
    let edited = match action {
        ClientCommand::List => {
            return match load(explicit) {
                Ok(config) => {
                    print!("{}", clients::list(&config));
                    ExitCode::SUCCESS
                }
                Err(code) => code,
            }
        }
        ClientCommand::Add {
            name,
            upstreams,
            read_only,
            methods,
            paths,
            admin,
        } => {
            let methods = if read_only {
                vec!["GET".to_owned(), "HEAD".to_owned()]
            } else {
                methods
            };
            let client = clients::NewClient {
                name,
                upstreams,
                methods,
                paths,
                admin,
            };
            clients::add(explicit, &client).map(|key| {
                eprintln!(
                    "tokenproxy: added client {}; its key is shown only now (clients send it as Proxy-Authorization: Bearer <key>). A running tokenproxy takes it up within 2 s, or at once on SIGHUP.",
                    client.name
                );
                println!("{key}");
            })
        }
        ClientCommand::Remove { name } => clients::remove(explicit, &name).map(|path| {
            eprintln!("tokenproxy: removed client {name} from {}", path.display());
        }),
    };
    match edited {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tokenproxy: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

/// Runs a command that talks to tokenproxy: at `--url` with no config read, else through
/// the config (a bad config exits 2 at once; none at all may still find a daemon at the
/// default address).
fn with_reach<F, Fut>(explicit: Option<&std::path::Path>, daemon: DaemonUrl, command: F) -> ExitCode
where
    F: FnOnce(Reach) -> Fut,
    Fut: std::future::Future<Output = Result<(), CommandError>>,
{
    let reach = match daemon.url {
        Some(url) => Reach::Url(url),
        None => match config::locate(explicit).and_then(|path| config::load(&path)) {
            Ok(config) => Reach::Config(Box::new(config)),
            Err(error @ ConfigError::NotFound { .. }) => Reach::NoConfig(error),
            Err(error) => {
                eprintln!("tokenproxy: config error: {error}");
                return ExitCode::from(2);
            }
        },
    };
    block_on(async move {
        match command(reach).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("tokenproxy: {error}");
                error.exit_code()
            }
        }
    })
}

/// Loads the config and runs a one-shot command on it.
fn with_config<F, Fut>(explicit: Option<&std::path::Path>, command: F) -> ExitCode
where
    F: FnOnce(Config) -> Fut,
    Fut: std::future::Future<Output = Result<(), CommandError>>,
{
    match load(explicit) {
        Ok(config) => block_on(async move {
            match command(config).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("tokenproxy: {error}");
                    error.exit_code()
                }
            }
        }),
        Err(code) => code,
    }
}

/// `--listen` as given, once checked (the config check names server.listen).
fn listen_address(text: &str) -> Result<String, String> {
    config::listen_address(text).map(|_| text.to_owned())
}

fn load(explicit: Option<&std::path::Path>) -> Result<Config, ExitCode> {
    load_with(explicit, &config::Overrides::default())
}

fn load_with(
    explicit: Option<&std::path::Path>,
    overrides: &config::Overrides,
) -> Result<Config, ExitCode> {
    config::locate(explicit)
        .and_then(|path| config::load_with(&path, overrides))
        .map_err(|error: ConfigError| {
            eprintln!("tokenproxy: config error: {error}");
            ExitCode::from(2)
        })
}

fn block_on(future: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    // One worker asked for (a sidecar, the benchmark): a single-threaded scheduler does the
    // same work without the multi-threaded one's cross-thread bookkeeping.
    let single = std::env::var("TOKIO_WORKER_THREADS").is_ok_and(|threads| threads.trim() == "1");
    let mut builder = if single {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    match builder.enable_all().build() {
        Ok(runtime) => runtime.block_on(future),
        Err(error) => {
            eprintln!("tokenproxy: cannot start the runtime: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Serves `config` until SIGTERM or SIGINT, then drains.
pub async fn serve(config: Config) -> ExitCode {
    match crate::server::start_logged(&config).await {
        Some(server) => {
            crate::server::serve_until_signal(server).await;
            ExitCode::SUCCESS
        }
        None => ExitCode::FAILURE,
    }
}

/// Logs to stderr. `TOKENPROXY_LOG` sets the filter; other crates stay at `warn` by
/// default, since their debug output could include request details.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TOKENPROXY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,tokenproxy=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}
