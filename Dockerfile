# syntax=docker/dockerfile:1
# The spillway server image: a release build on the official Rust image, run from a
# distroless base (glibc, CA certificates, no shell, no package manager) as a non-root user.
#
#   docker build -t REGISTRY/spillway:0.1.0 .
#   docker push REGISTRY/spillway:0.1.0
#   docker run --rm -p 8080:8080 REGISTRY/spillway:0.1.0          # spillway serve
#   docker run --rm --network host REGISTRY/spillway:0.1.0 call spillway.Demo.v1.echo data:binary=hi
#
# The default command is `serve`; any other arguments run that subcommand instead
# (`call ...`, `storage init ...`). Configuration is the SPILLWAY_* environment (README.md).

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# The cache mounts keep the crate registry and build artifacts between builds (BuildKit);
# the binary is copied out of the cached target directory in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin spillway \
    && install -D -m 0755 target/release/spillway /out/spillway

# Debian 12, like the build stage, so the binary finds the glibc it was linked against.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/spillway /usr/local/bin/spillway
# In a container the server must listen on every interface, not on loopback.
ENV SPILLWAY_LISTEN=0.0.0.0:8080
# 65532: distroless's "nonroot" user, numeric so that runAsNonRoot can verify it.
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/spillway"]
CMD ["serve"]
