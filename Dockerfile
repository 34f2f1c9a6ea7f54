# syntax=docker/dockerfile:1
#
# tokenproxy as a container (sidecar or standalone).
#
#   docker build -t tokenproxy .
#   docker run --rm -p 8080:8080 \
#       -v "$PWD/config.toml:/etc/tokenproxy/config.toml:ro" \
#       -v tokenproxy-store:/var/lib/tokenproxy \
#       tokenproxy
#
# The config is found, in this order, at `--config FILE`, `$TOKENPROXY_CONFIG`,
# `$TOKENPROXY_CONFIG_TOML` (the whole config as one variable, no file needed) and, by default
# here, /etc/tokenproxy/config.toml (XDG_CONFIG_HOME=/etc below). Secrets belong in
# `${file:/run/secrets/NAME}` (Docker and Kubernetes secrets) or `${ENV_NAME}`, never in the
# image or the config text.
#
# Inside a container, other containers and `-p` port publishing reach the proxy only if it
# listens beyond loopback, and the proxy answers 421 to any Host name it does not know
# (DNS-rebinding guard), and a listener beyond loopback needs a client key (browsers there
# send no Origin or Sec-Fetch-*, so without one any web page could spend the tokens). So a
# container config needs all three:
#
#   [server]
#   listen = "0.0.0.0:8080"
#   allowed_hosts = ["tokenproxy"]   # the service / container name clients put in the URL
#   client_key = "${file:/run/secrets/tokenproxy_client_key}"   # clients send Proxy-Authorization: Bearer <key>
#
# A sidecar whose app shares the network namespace (a Kubernetes pod) can keep the default
# listen = "127.0.0.1:8080": see examples/kubernetes/.
#
# The store (/var/lib/tokenproxy/tokens.json, XDG_STATE_HOME=/var/lib below) is a volume so that
# tokens, including rotated single-use refresh tokens, survive a container restart.

# ---- build ---------------------------------------------------------------------------------
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# The cache mounts keep the crates.io index, the downloaded crates and target/ between builds;
# the binary is copied out of the cached target/ in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && install -D -m 0755 target/release/tokenproxy /out/usr/local/bin/tokenproxy \
    && install -d -m 0755 /out/etc/tokenproxy \
    && install -d -m 0700 /out/var/lib/tokenproxy

# ---- run: glibc + CA certificates, no shell, no package manager, uid 65532 -----------------
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/usr/local/bin/tokenproxy /usr/local/bin/tokenproxy
COPY --from=build /out/etc/tokenproxy /etc/tokenproxy
COPY --from=build --chown=65532:65532 /out/var/lib/tokenproxy /var/lib/tokenproxy

# XDG_CONFIG_HOME=/etc makes /etc/tokenproxy/config.toml the default config file, while an
# explicit TOKENPROXY_CONFIG or TOKENPROXY_CONFIG_TOML given at `docker run` still wins;
# XDG_STATE_HOME=/var/lib puts the default store at /var/lib/tokenproxy/tokens.json.
# (Log level: TOKENPROXY_LOG at `docker run`, default warn,tokenproxy=info.)
# TOKENPROXY_ACCESS_LOG=stderr: a container logs every request as a JSON line on stderr,
# unless the config has an [access_log] table (`-e TOKENPROXY_ACCESS_LOG=off` turns it off).
# DL3064 reads "TOKEN" in the name TOKENPROXY_ACCESS_LOG as a secret; it holds none.
# hadolint ignore=DL3064
ENV XDG_CONFIG_HOME=/etc \
    XDG_STATE_HOME=/var/lib \
    TOKENPROXY_ACCESS_LOG=stderr

VOLUME ["/etc/tokenproxy", "/var/lib/tokenproxy"]
USER 65532:65532
EXPOSE 8080
# tokenproxy drains in-flight requests on SIGTERM within server.drain_timeout (default 10s):
# give `docker stop` more than that, e.g. `docker stop -t 15`.
STOPSIGNAL SIGTERM
# The binary itself queries /-/health at the configured listen address (no curl in the image).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/tokenproxy", "health"]
ENTRYPOINT ["/usr/local/bin/tokenproxy"]
CMD ["run"]
