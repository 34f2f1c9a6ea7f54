//! Shell completions that also offer upstream names. clap writes the static part; the
//! names depend on the config, so each shell's script asks `tokenproxy upstreams` when a
//! command that takes a name (`login`, `token`, ...) is being completed, passing on a
//! `--config` or `--url` already on the line.

use clap_complete::Shell;

/// clap's `script` for `shell`, with upstream names offered for `commands`' first argument.
/// Shells without a hook here get clap's script unchanged.
pub fn with_upstream_names(shell: Shell, script: &str, commands: &[&str]) -> String {
    let commands = commands.join(" ");
    match shell {
        Shell::Bash => {
            let script =
                script.replace("complete -F _tokenproxy ", "complete -F _tokenproxy_names ");
            format!("{script}\n{}", BASH.replace("COMMANDS", &commands))
        }
        Shell::Zsh => {
            let script = script
                .lines()
                .map(|line| match line.strip_suffix(":_default' \\") {
                    Some(start) if line.starts_with("':name -- ") => {
                        format!("{start}:_tokenproxy_upstreams' \\")
                    }
                    _ => line.to_owned(),
                })
                .collect::<Vec<_>>()
                .join("\n");
            match script.split_once('\n') {
                Some((compdef, rest)) => format!("{compdef}\n{ZSH}\n{rest}\n"),
                None => script,
            }
        }
        Shell::Fish => format!("{script}\n{}", FISH.replace("COMMANDS", &commands)),
        _ => script.to_owned(),
    }
}

const BASH: &str = r#"# Upstream names after a command that takes one; clap's completion for the rest.
_tokenproxy_names() {
    local i word command="" position=0 cur="${COMP_WORDS[COMP_CWORD]}"
    local -a source=()
    for ((i = 1; i < COMP_CWORD; i++)); do
        word="${COMP_WORDS[i]}"
        case "$word" in
            -c|--config|--url) source+=("$word" "${COMP_WORDS[i+1]}"); ((i++)) ;;
            --config=*|--url=*) source+=("$word") ;;
            -*) ;;
            *) if [[ -z "$command" ]]; then command="$word"; else ((position++)); fi ;;
        esac
    done
    if [[ -n "$command" && " COMMANDS " == *" $command "* && $position -eq 0 && "$cur" != -* ]]; then
        COMPREPLY=($(compgen -W "$(tokenproxy upstreams "${source[@]}" 2>/dev/null)" -- "$cur"))
        return 0
    fi
    _tokenproxy "$@"
}
"#;

const ZSH: &str = r#"# Upstream names, from `tokenproxy upstreams`.
_tokenproxy_upstreams() {
    local -a names
    names=(${(f)"$(tokenproxy upstreams 2>/dev/null)"})
    _describe -t upstreams 'upstream' names
}"#;

const FISH: &str = r#"# Upstream names, from `tokenproxy upstreams`.
complete -c tokenproxy -n "__fish_seen_subcommand_from COMMANDS" -f -a "(tokenproxy upstreams 2>/dev/null)" -d upstream
"#;
