# shellcheck shell=bash
# Shared set-up for Custos scripts: source it, then call the functions.
#
#   custos_install_deps          apt/pip packages + Swift check (idempotent)
#   pg_start RUNDIR PORT         fresh PostgreSQL cluster with roles and sample data
#   pg_stop RUNDIR               stop, delete the cluster and its secrets (log kept as RUNDIR/postgres.log)
#   pg_psql RUNDIR ROLE [DB] [psql args...]   psql over TCP as a custos_* role
#   issuer_start RUNDIR PORT     OIDC issuer in the background (PORT 0 = any free port)
#   issuer_stop RUNDIR
#   issuer_mint RUNDIR [oidc_issuer.py mint args...]
#   custos_free_port             print a free loopback TCP port
#
# Functions return non-zero on failure (they never exit), so callers decide;
# most scripts will want `set -euo pipefail`.
#
# Environment knobs:
#   CUSTOS_PYTHON      python interpreter (default: python3 on PATH)
#   CUSTOS_PG_BINDIR   PostgreSQL bin dir (default: /usr/lib/postgresql/15/bin, else newest)
#   CUSTOS_PG_SSL      1 (default) = the cluster also accepts TLS, 0 = plain only
#   CUSTOS_PG_EXTRA_CONF  extra postgresql.conf lines appended last

CUSTOS_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CUSTOS_PYTHON="${CUSTOS_PYTHON:-python3}"
CUSTOS_ISSUER_PY="$CUSTOS_ROOT/scripts/peers/oidc_issuer.py"

custos_log() { echo "custos-scripts: $*" >&2; }
custos_fail() { custos_log "error: $*"; return 1; }

# PostgreSQL refuses to run as root; as another user, run directly.
_custos_as_postgres() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

_custos_sudo() {
    if [ "$(id -u)" = 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        custos_fail "need root (or sudo) for: $*"
    fi
}

_custos_port_busy() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

custos_free_port() {
    "$CUSTOS_PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# ---------------------------------------------------------------------------
# dependencies

_CUSTOS_APT_UPDATED=0
_custos_apt_install() {
    # A fresh machine has empty or stale lists: update once per shell.
    if [ "$_CUSTOS_APT_UPDATED" = 0 ]; then
        _custos_sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q || return 1
        _CUSTOS_APT_UPDATED=1
    fi
    _custos_sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

_custos_pkg_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

custos_install_deps() {
    # libpg-query-dev: CustosSQL links libpg_query (see NOTES.md).
    local pkgs=(postgresql postgresql-contrib pgbouncer libsqlite3-dev libpg-query-dev libssl-dev openssl)
    local missing=() p
    for p in "${pkgs[@]}"; do
        _custos_pkg_installed "$p" || missing+=("$p")
    done
    if ! command -v "$CUSTOS_PYTHON" >/dev/null 2>&1; then
        missing+=(python3)
    fi
    if ! "$CUSTOS_PYTHON" -m pip --version >/dev/null 2>&1 && ! _custos_pkg_installed python3-pip; then
        missing+=(python3-pip)
    fi
    if [ "${#missing[@]}" -gt 0 ]; then
        custos_log "apt-get install ${missing[*]}"
        _custos_apt_install "${missing[@]}" || custos_fail "apt-get install ${missing[*]} failed" || return 1
    fi
    "$CUSTOS_PYTHON" -m pip --version >/dev/null 2>&1 ||
        custos_fail "$CUSTOS_PYTHON has no pip (set CUSTOS_PYTHON to an interpreter that has one)" || return 1

    # One interpreter start: print each requirement whose module is absent.
    local need=()
    mapfile -t need < <("$CUSTOS_PYTHON" -c '
import importlib.util
for req, mod in [("psycopg[binary]", "psycopg"), ("joserfc", "joserfc"), ("pytest", "pytest"), ("pyyaml", "yaml")]:
    if importlib.util.find_spec(mod) is None:
        print(req)
')
    if [ "${#need[@]}" -gt 0 ]; then
        custos_log "pip install ${need[*]}"
        local pip=("$CUSTOS_PYTHON" -m pip install -q --disable-pip-version-check --root-user-action=ignore)
        # Debian's own python refuses (PEP 668); only then override it.
        "${pip[@]}" "${need[@]}" 2>/dev/null ||
            "${pip[@]}" --break-system-packages "${need[@]}" ||
            custos_fail "pip install ${need[*]} failed" || return 1
    fi

    custos_require_swift
}

custos_require_swift() {
    if ! command -v swift >/dev/null 2>&1; then
        if [ -x /opt/swift/usr/bin/swift ]; then
            export PATH="/opt/swift/usr/bin:$PATH"
        else
            custos_fail "no Swift toolchain: looked for swift on PATH and /opt/swift/usr/bin/swift; install Swift 6.1 or newer (it is not in Debian's archive)"
            return 1
        fi
    fi
    CUSTOS_SWIFT="$(command -v swift)"
    export CUSTOS_SWIFT
}

# ---------------------------------------------------------------------------
# PostgreSQL

_custos_pg_bindir() {
    if [ -n "${CUSTOS_PG_BINDIR:-}" ]; then
        echo "$CUSTOS_PG_BINDIR"
    elif [ -x /usr/lib/postgresql/15/bin/initdb ]; then
        echo /usr/lib/postgresql/15/bin
    else
        local newest
        newest="$(printf '%s\n' /usr/lib/postgresql/*/bin | grep -v '\*' | sort -V | tail -n 1)"
        [ -n "$newest" ] || { custos_fail "PostgreSQL server binaries not found (run custos_install_deps)"; return 1; }
        echo "$newest"
    fi
}

_custos_abs_dir() {
    mkdir -p "$1" && (cd "$1" && pwd)
}

_custos_random_password() {
    # hex only: safe in URLs, config files and SQL literals alike
    od -An -tx1 -N24 /dev/urandom | tr -d ' \n'
}

# Self-signed CA + server certificate so the gateway's sslmode require /
# verify-full can be tested against this cluster.
_custos_pg_certs() {
    local base="$1" secrets="$2" extfile
    extfile="$(mktemp)"
    printf '%s\n' 'subjectAltName=IP:127.0.0.1,DNS:localhost' 'basicConstraints=CA:FALSE' \
        'keyUsage=digitalSignature,keyEncipherment' 'extendedKeyUsage=serverAuth' >"$extfile"
    (
        set -e
        cd "$base"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
            -subj '/CN=Custos test CA' -keyout ca.key -out ca.crt \
            -addext 'basicConstraints=critical,CA:TRUE' -addext 'keyUsage=critical,keyCertSign,cRLSign'
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
            -subj '/CN=127.0.0.1' -keyout server.key -out server.csr
        openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 \
            -extfile "$extfile" -out server.crt
        rm -f ca.key ca.srl server.csr
        chown postgres:postgres server.key server.crt 2>/dev/null || true
        chmod 600 server.key
    ) >/dev/null 2>&1
    local rc=$?
    rm -f "$extfile"
    [ "$rc" = 0 ] || { custos_fail "openssl could not make the test certificates"; return 1; }
    cp "$base/ca.crt" "$secrets/pg-ca.crt"
}

# Stop and delete a cluster (also one left by an earlier run on the same
# port). Immediate mode: the data is deleted anyway, and a fast stop would
# spend seconds on a shutdown checkpoint of the pgbench tables.
_custos_pg_remove() {
    local base="$1" bindir="$2" keep_log="${3:-}"
    case "$base" in /tmp/custos-pg-[0-9]*) ;; *) custos_fail "refusing to remove $base"; return 1 ;; esac
    if [ -f "$base/data/postmaster.pid" ]; then
        _custos_as_postgres "$bindir/pg_ctl" -D "$base/data" -m immediate -w -t 30 stop >/dev/null 2>&1 || {
            custos_fail "pg_ctl stop failed for $base/data"
            return 1
        }
    fi
    # The server log is small and useful for post-mortems.
    if [ -n "$keep_log" ] && [ -f "$base/postgres.log" ]; then
        cp "$base/postgres.log" "$keep_log"
    fi
    rm -rf "$base"
}

# pg_start RUNDIR PORT
# Cluster: /tmp/custos-pg-PORT/data (the postgres user cannot be assumed to
# reach RUNDIR inside a root-owned checkout); socket dir /tmp/custos-pg-PORT.
# Writes RUNDIR/secrets/{scram,md5,plain,super}.pw (0600, no trailing newline),
# RUNDIR/secrets/pg-ca.crt (when CUSTOS_PG_SSL=1) and RUNDIR/pg.env
# (sourceable; 0600 because it carries CUSTOS_IT_PG_PASSWORD), and exports
# the same variables into the calling shell.
pg_start() {
    local rundir port
    [ "$#" = 2 ] || { custos_fail "usage: pg_start RUNDIR PORT"; return 1; }
    rundir="$(_custos_abs_dir "$1")" || return 1
    port="$2"
    case "$port" in '' | *[!0-9]*) custos_fail "pg_start: bad port '$port'"; return 1 ;; esac

    local bindir base data secrets
    bindir="$(_custos_pg_bindir)" || return 1
    base="/tmp/custos-pg-$port"
    data="$base/data"
    secrets="$rundir/secrets"

    if [ -f "$rundir/pg.env" ]; then
        custos_log "pg_start: stopping the cluster recorded in $rundir/pg.env first"
        pg_stop "$rundir" || return 1
    fi
    _custos_pg_remove "$base" "$bindir" || return 1
    if _custos_port_busy "$port"; then
        custos_fail "pg_start: something already listens on 127.0.0.1:$port"
        return 1
    fi

    mkdir -p "$base" && chown postgres:postgres "$base" 2>/dev/null
    chmod 0755 "$base"
    mkdir -p "$secrets" && chmod 0700 "$secrets"

    _custos_as_postgres "$bindir/initdb" -D "$data" -U postgres -E UTF8 --locale=C.UTF-8 \
        --auth-local=peer --auth-host=reject --no-sync >"$base/initdb.log" 2>&1 || {
        cat "$base/initdb.log" >&2
        custos_fail "initdb failed"
        return 1
    }

    local ssl=off
    if [ "${CUSTOS_PG_SSL:-1}" = 1 ]; then
        _custos_pg_certs "$base" "$secrets" || return 1
        ssl=on
    fi

    # Later settings win, so appending is enough.
    _custos_as_postgres tee -a "$data/postgresql.conf" >/dev/null <<EOF

# --- custos test cluster (scripts/lib/common.sh) ---
listen_addresses = '127.0.0.1'
port = $port
max_connections = 200
unix_socket_directories = '$base'
password_encryption = 'scram-sha-256'
ssl = $ssl
ssl_cert_file = '$base/server.crt'
ssl_key_file = '$base/server.key'
log_connections = on
log_line_prefix = '%m [%p] %q%u@%d '
${CUSTOS_PG_EXTRA_CONF:-}
EOF

    # Each role gets the method named after it; anything unlisted is refused.
    _custos_as_postgres tee "$data/pg_hba.conf" >/dev/null <<'EOF'
# TYPE  DATABASE        USER            ADDRESS         METHOD
# administration by pg_start itself, through the socket dir only
local   all             postgres                        peer
host    appdb,pgbench   custos_scram    127.0.0.1/32    scram-sha-256
host    appdb,pgbench   custos_md5      127.0.0.1/32    md5
host    appdb,pgbench   custos_plain    127.0.0.1/32    password
host    all             custos_super    127.0.0.1/32    scram-sha-256
local   all             all                             reject
host    all             all             0.0.0.0/0       reject
host    all             all             ::/0            reject
EOF

    _custos_as_postgres "$bindir/pg_ctl" -D "$data" -l "$base/postgres.log" -w -t 60 start >/dev/null || {
        tail -n 30 "$base/postgres.log" >&2
        custos_fail "PostgreSQL did not start on port $port"
        return 1
    }

    local role
    for role in scram md5 plain super; do
        (umask 077 && printf '%s' "$(_custos_random_password)" >"$secrets/$role.pw")
    done

    local admin=("$bindir/psql" -X -q -v ON_ERROR_STOP=1 -h "$base" -p "$port" -U postgres)
    # Passwords travel as psql variables (:'name' quotes them), never through SQL text built by the shell.
    _custos_as_postgres "${admin[@]}" -d postgres \
        -v scram_pw="$(cat "$secrets/scram.pw")" -v md5_pw="$(cat "$secrets/md5.pw")" \
        -v plain_pw="$(cat "$secrets/plain.pw")" -v super_pw="$(cat "$secrets/super.pw")" <<'EOF' || {
CREATE ROLE custos_scram LOGIN PASSWORD :'scram_pw';
-- an md5 verifier, so pg_hba "md5" really runs the md5 exchange (with a SCRAM verifier it would run SCRAM)
SET password_encryption = 'md5';
CREATE ROLE custos_md5 LOGIN PASSWORD :'md5_pw';
RESET password_encryption;
CREATE ROLE custos_plain LOGIN PASSWORD :'plain_pw';
CREATE ROLE custos_super LOGIN SUPERUSER PASSWORD :'super_pw';
CREATE DATABASE appdb;
CREATE DATABASE pgbench OWNER custos_scram;
EOF
        custos_fail "creating roles and databases failed"
        return 1
    }
    _custos_as_postgres "${admin[@]}" -d appdb <"$CUSTOS_ROOT/scripts/sql/appdb.sql" || {
        custos_fail "loading scripts/sql/appdb.sql failed"
        return 1
    }
    PGPASSWORD="$(cat "$secrets/scram.pw")" PGSSLMODE=disable \
        "$bindir/pgbench" -i -s 1 -q -h 127.0.0.1 -p "$port" -U custos_scram pgbench >"$base/pgbench-init.log" 2>&1 || {
        cat "$base/pgbench-init.log" >&2
        custos_fail "pgbench -i failed"
        return 1
    }

    (
        umask 077
        cat >"$rundir/pg.env" <<EOF
# written by pg_start; pg_stop removes it
CUSTOS_PG_HOST=127.0.0.1
CUSTOS_PG_PORT=$port
CUSTOS_PG_BASE=$base
CUSTOS_PG_DATA=$data
CUSTOS_PG_SOCKET_DIR=$base
CUSTOS_PG_BINDIR=$bindir
CUSTOS_PG_SECRETS=$secrets
CUSTOS_PG_SSL=$ssl
CUSTOS_PG_CA_FILE=$([ "$ssl" = on ] && echo "$secrets/pg-ca.crt")
CUSTOS_IT_PG_HOST=127.0.0.1
CUSTOS_IT_PG_PORT=$port
CUSTOS_IT_PG_USER=custos_scram
CUSTOS_IT_PG_PASSWORD=$(cat "$secrets/scram.pw")
CUSTOS_IT_PG_DB=appdb
EOF
    )
    set -a
    # shellcheck disable=SC1091
    . "$rundir/pg.env"
    set +a
    custos_log "PostgreSQL $("$bindir/postgres" -V | awk '{print $3}') on 127.0.0.1:$port (data $data, secrets $secrets)"
}

# pg_stop RUNDIR: no error when nothing is recorded there.
pg_stop() {
    local rundir="${1:?usage: pg_stop RUNDIR}"
    [ -f "$rundir/pg.env" ] || { custos_log "pg_stop: no cluster recorded in $rundir"; return 0; }
    local base bindir
    base="$(sed -n 's/^CUSTOS_PG_BASE=//p' "$rundir/pg.env")"
    bindir="$(sed -n 's/^CUSTOS_PG_BINDIR=//p' "$rundir/pg.env")"
    _custos_pg_remove "$base" "$bindir" "$rundir/postgres.log" || return 1
    rm -f "$rundir/pg.env" "$rundir/secrets/"{scram,md5,plain,super}.pw "$rundir/secrets/pg-ca.crt"
    rmdir "$rundir/secrets" 2>/dev/null || true
    custos_log "pg_stop: removed $base"
}

# pg_psql RUNDIR ROLE [DB] [psql args...]; ROLE is scram|md5|plain|super or custos_<that>.
pg_psql() {
    [ "$#" -ge 2 ] || { custos_fail "usage: pg_psql RUNDIR ROLE [DB] [psql args...]"; return 1; }
    local rundir="$1" role="${2#custos_}" db=appdb
    shift 2
    # DB is optional: the next word is a database unless it is an option.
    if [ "$#" -gt 0 ] && [ "${1#-}" = "$1" ]; then
        db="$1"
        shift
    fi
    [ -f "$rundir/pg.env" ] || { custos_fail "pg_psql: no cluster recorded in $rundir"; return 1; }
    local port bindir
    port="$(sed -n 's/^CUSTOS_PG_PORT=//p' "$rundir/pg.env")"
    bindir="$(sed -n 's/^CUSTOS_PG_BINDIR=//p' "$rundir/pg.env")"
    PGPASSWORD="$(cat "$rundir/secrets/$role.pw")" "$bindir/psql" -X -h 127.0.0.1 -p "$port" \
        -U "custos_$role" -d "$db" "$@"
}

# ---------------------------------------------------------------------------
# OIDC issuer

# issuer_start RUNDIR PORT: state in RUNDIR/oidc (kept across restarts, so
# kids stay stable); writes RUNDIR/oidc.env and exports CUSTOS_OIDC_ISSUER,
# CUSTOS_IT_OIDC_ISSUER and CUSTOS_OIDC_STATE.
issuer_start() {
    local rundir port
    [ "$#" = 2 ] || { custos_fail "usage: issuer_start RUNDIR PORT"; return 1; }
    rundir="$(_custos_abs_dir "$1")" || return 1
    port="$2"
    local state="$rundir/oidc"
    mkdir -p "$state"
    issuer_stop "$rundir" >/dev/null 2>&1 || true
    if [ "$port" != 0 ] && _custos_port_busy "$port"; then
        custos_fail "issuer_start: something already listens on 127.0.0.1:$port"
        return 1
    fi
    rm -f "$state/issuer"
    nohup "$CUSTOS_PYTHON" "$CUSTOS_ISSUER_PY" serve --state "$state" --host 127.0.0.1 --port "$port" \
        --pidfile "$state/issuer.pid" </dev/null >>"$state/issuer.log" 2>&1 &
    local child=$!
    for _ in $(seq 1 100); do
        if [ -s "$state/issuer.pid" ] && [ -s "$state/issuer" ]; then
            break
        fi
        kill -0 "$child" 2>/dev/null || break
        sleep 0.1
    done
    if ! [ -s "$state/issuer" ] ||
        ! "$CUSTOS_PYTHON" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + "/.well-known/openid-configuration", timeout=5)' \
            "$(cat "$state/issuer")" 2>/dev/null; then
        tail -n 20 "$state/issuer.log" >&2
        kill "$child" 2>/dev/null
        custos_fail "OIDC issuer did not start"
        return 1
    fi
    CUSTOS_OIDC_ISSUER="$(cat "$state/issuer")"
    printf 'CUSTOS_OIDC_ISSUER=%s\nCUSTOS_IT_OIDC_ISSUER=%s\nCUSTOS_OIDC_STATE=%s\n' \
        "$CUSTOS_OIDC_ISSUER" "$CUSTOS_OIDC_ISSUER" "$state" >"$rundir/oidc.env"
    export CUSTOS_OIDC_ISSUER CUSTOS_IT_OIDC_ISSUER="$CUSTOS_OIDC_ISSUER" CUSTOS_OIDC_STATE="$state"
    custos_log "OIDC issuer at $CUSTOS_OIDC_ISSUER (state $state)"
}

issuer_stop() {
    local rundir="${1:?usage: issuer_stop RUNDIR}"
    local pidfile="$rundir/oidc/issuer.pid" pid
    rm -f "$rundir/oidc.env"
    [ -s "$pidfile" ] || return 0
    pid="$(cat "$pidfile")"
    # Only signal the process if it is still our issuer (pids get reused).
    if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'oidc_issuer.py serve'; then
        kill -TERM "$pid"
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    fi
    rm -f "$pidfile"
}

issuer_mint() {
    local rundir="${1:?usage: issuer_mint RUNDIR [mint args]}"
    shift
    "$CUSTOS_PYTHON" "$CUSTOS_ISSUER_PY" mint --state "$rundir/oidc" "$@"
}
