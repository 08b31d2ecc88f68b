# syntax=docker/dockerfile:1
# The wopr-operator image: every binary of the crate (controller, sidecar,
# demo agent, CRD printer in `wopr-operator`; the kubectl plugin when it
# lands) on distroless, running as an unprivileged user, with no shell.
#
#   docker build -t ghcr.io/wopr-network/wopr-operator:dev .
#
# Without a daemon, hack/build-image.sh packs the same binary into an OCI
# archive.

FROM docker.io/library/rust:1.95-slim-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends python3 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
COPY migrations migrations
COPY src src
COPY benches benches
COPY hack/build-release.sh hack/
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    hack/build-release.sh /out

# glibc and libgcc, CA certificates, /etc/passwd with `nonroot` (65532); no shell.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/ /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/wopr-operator"]
