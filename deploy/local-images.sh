#!/usr/bin/env bash
# Base images without a container registry: for sites whose servers reach a Debian mirror (or a local one) but no
# Docker registry. Builds, with the Docker daemon that DOCKER_HOST (or the default socket) names:
#
#   local/bookworm:minbase   debootstrap --variant=minbase bookworm, imported with `docker import`
#   local/python:3.11        + python3 python3-venv python-is-python3 (Debian's Python 3.11) and this machine's
#                            local CA certificates (pip behind a TLS-inspecting proxy); pass it to the node's build:
#                            docker build -f deploy/Dockerfile --build-arg PYTHON_IMAGE=local/python:3.11 .
#   local/redis:7            Debian's redis-server (the compose service's `command` replaces the default one)
#   local/postgres:15        Debian's postgresql, with an entrypoint that honours POSTGRES_USER / POSTGRES_DB /
#                            POSTGRES_PASSWORD like the official image (scram-sha-256 over TCP)
#
# A compose override file points the services at the last two (docs/operations.md, "Building without a
# registry"). Every step is skipped when its image exists already; the debootstrap tarball is cached in the cache
# folder, so a rerun takes seconds.
#
# usage: deploy/local-images.sh [--cache DIR] [--mirror URL] [--ca-dir DIR]
#   --cache   where the rootfs tarball is kept (default: /var/cache/ainode-docker)
#   --mirror  the Debian mirror debootstrap and apt use (default: http://deb.debian.org/debian)
#   --ca-dir  local CA certificates (*.crt) added to local/python only (default: /usr/local/share/ca-certificates)
# Needs root (debootstrap) the first time only.
set -euo pipefail

cache="/var/cache/ainode-docker"
mirror="http://deb.debian.org/debian"
ca_dir="/usr/local/share/ca-certificates"
while [ $# -gt 0 ]; do
    case "$1" in
        --cache) cache="$2"; shift 2 ;;
        --mirror) mirror="$2"; shift 2 ;;
        --ca-dir) ca_dir="$2"; shift 2 ;;
        *) echo "usage: $0 [--cache DIR] [--mirror URL] [--ca-dir DIR]" >&2; exit 2 ;;
    esac
done

export DOCKER_BUILDKIT=0  # the classic builder: BuildKit would try to reach a registry for its front end
BASE=local/bookworm:minbase
PYTHON=local/python:3.11
REDIS=local/redis:7
POSTGRES=local/postgres:15

have() { docker image inspect "$1" >/dev/null 2>&1; }
say() { echo "local-images: $*" >&2; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# 1. the Debian root file system, once (about 20 s and 40 MB from the mirror), kept as a tarball
tarball="$cache/bookworm-minbase.tar"
if ! have "$BASE"; then
    if [ ! -s "$tarball" ]; then
        mkdir -p "$cache"
        rootfs="$cache/rootfs.partial"
        rm -rf "$rootfs"
        say "debootstrap bookworm from $mirror"
        debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$cache/debootstrap.log" 2>&1 \
            || { tail -20 "$cache/debootstrap.log" >&2; exit 1; }
        # the point releases' fixes too, not only the release itself
        printf 'deb %s bookworm main\ndeb %s bookworm-updates main\ndeb %s-security bookworm-security main\n' \
            "$mirror" "$mirror" "$mirror" >"$rootfs/etc/apt/sources.list"
        # as Debian's official images do: no apt caches, documentation or translations in the layers
        cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
Acquire::Languages "none";
EOF
        cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker-minimal" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
        find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
        rm -rf "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/var/cache/apt/*.bin \
            "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
        find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
        tar -C "$rootfs" -cf "$tarball.partial" . && mv "$tarball.partial" "$tarball"
        rm -rf "$rootfs"
    fi
    say "import $BASE"
    docker import "$tarball" "$BASE" >/dev/null
fi

# 2. Python 3.11 from Debian; the node's Dockerfile installs python3-dev in its builder stage only
if ! have "$PYTHON"; then
    mkdir -p "$work/python/ca"
    if [ -d "$ca_dir" ]; then
        find "$ca_dir" -maxdepth 1 -name '*.crt' -exec cp {} "$work/python/ca/" \;
    fi
    cat >"$work/python/Dockerfile" <<EOF
FROM $BASE
COPY ca/ /usr/local/share/ca-certificates/
RUN apt-get update \\
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \\
       ca-certificates python3 python3-venv python-is-python3 \\
    && update-ca-certificates \\
    && rm -rf /var/lib/apt/lists/*
# pip (with or without truststore) and requests use the system bundle, local CAs included
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt \\
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt \\
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \\
    LANG=C.UTF-8
CMD ["python3"]
EOF
    say "build $PYTHON"
    docker build -q -t "$PYTHON" "$work/python" >/dev/null
fi

# 3. Redis: the compose service gives the arguments; inside the private network no protected mode
if ! have "$REDIS"; then
    mkdir -p "$work/redis"
    cat >"$work/redis/Dockerfile" <<EOF
FROM $BASE
RUN apt-get update \\
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server redis-tools \\
    && rm -rf /var/lib/apt/lists/* \\
    && mkdir -p /data && chown redis:redis /data
USER redis
WORKDIR /data
VOLUME /data
EXPOSE 6379
CMD ["redis-server", "--protected-mode", "no", "--dir", "/data"]
EOF
    say "build $REDIS"
    docker build -q -t "$REDIS" "$work/redis" >/dev/null
fi

# 4. PostgreSQL: a fresh volume is initialised from POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB
if ! have "$POSTGRES"; then
    mkdir -p "$work/postgres"
    cat >"$work/postgres/entrypoint.sh" <<'EOF'
#!/bin/sh
# the official image's contract, reduced: initialise an empty data folder once, then run the server
set -eu
: "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set}"
user="${POSTGRES_USER:-postgres}"
db="${POSTGRES_DB:-$user}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pwfile="$(mktemp)"
    printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
    initdb -D "$PGDATA" -U "$user" --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256 \
        --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    rm -f "$pwfile"
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
    if [ "$db" != "postgres" ]; then
        pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
        createdb -U "$user" -O "$user" "$db"
        pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    fi
fi
exec postgres -D "$PGDATA" -c listen_addresses='*' "$@"
EOF
    cat >"$work/postgres/Dockerfile" <<EOF
FROM $BASE
RUN apt-get update \\
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql \\
    && rm -rf /var/lib/apt/lists/* /var/lib/postgresql/* /etc/postgresql/* \\
    && mkdir -p /var/lib/postgresql/data /var/run/postgresql \\
    && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql
COPY entrypoint.sh /usr/local/bin/postgres-entrypoint
RUN chmod 0755 /usr/local/bin/postgres-entrypoint \\
    && ln -s "\$(ls -d /usr/lib/postgresql/*/bin | head -1)" /usr/local/lib/postgresql-bin
ENV PATH=/usr/local/lib/postgresql-bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    PGDATA=/var/lib/postgresql/data \\
    LANG=C.UTF-8
USER postgres
VOLUME /var/lib/postgresql/data
EXPOSE 5432
STOPSIGNAL SIGINT
ENTRYPOINT ["postgres-entrypoint"]
EOF
    say "build $POSTGRES"
    docker build -q -t "$POSTGRES" "$work/postgres" >/dev/null
fi

say "ready: $BASE $PYTHON $REDIS $POSTGRES"
