#!/bin/sh
# attnd's container entrypoint (both images; tini runs it as PID 1's child).
#
#   attnd-entrypoint [attnd flags...]       derive the group settings, then exec attnd
#   attnd-entrypoint healthcheck [SERVICE]  gRPC health Check of the local attnd
#                                           (SERVICE default liveness; Docker's HEALTHCHECK)
#
# attnd itself takes every setting as a flag or an ATTND_* variable (flags
# win; deploy/CONFIG.md is the table). This script only fills in what a
# StatefulSet or a Compose file cannot write literally, and always ends in
# `exec attnd`, so attnd is the process that receives SIGTERM:
#
#   ATTND_GROUP_SIZE=N           this pod is one of N ranks; then:
#   ATTND_RANK                   unset: the ordinal at the end of the hostname
#                                (StatefulSet pod attnd-3 -> rank 3)
#   ATTND_GROUP                  unset (and no ATTND_GROUP_FILE): built from
#   ATTND_GROUP_HOST_TEMPLATE    every rank's host name, "{rank}" replaced by its
#                                number, e.g. attnd-{rank}.attnd.NAMESPACE.svc
#   ATTND_GROUP_PORT             every rank's UCX listener port (default 7800)
#   ATTND_GROUP_BIND             this rank's own entry (default 0.0.0.0: listen
#                                on every interface, without waiting for its
#                                own DNS record, which appears only once the
#                                pod runs)
#
# ATTND_BIN and ATTND_CLI name the programs (default: attnd and attnd-cli on
# PATH); tests/deploy/test_entrypoint.py runs this script outside a
# container against the real attnd --print-config.
# Exit 2 with a message naming the variable when a setting is malformed.
set -eu

ATTND_BIN=${ATTND_BIN:-attnd}
ATTND_CLI=${ATTND_CLI:-attnd-cli}

die() {
  echo "attnd-entrypoint: $*" >&2
  exit 2
}

is_uint() {
  case $1 in '' | *[!0-9]*) return 1 ;; *) return 0 ;; esac
}

if [ "${1:-}" = healthcheck ]; then
  listen=${ATTND_LISTEN:-127.0.0.1:7700}
  port=${listen##*:}
  is_uint "$port" || die "ATTND_LISTEN: no port in \"$listen\""
  exec "$ATTND_CLI" --target "127.0.0.1:$port" \
    --deadline-ms "${ATTND_HEALTHCHECK_DEADLINE_MS:-3000}" health "${2:-liveness}"
fi

if [ -n "${ATTND_GROUP_SIZE:-}" ]; then
  size=$ATTND_GROUP_SIZE
  is_uint "$size" && [ "$size" -ge 1 ] && [ "$size" -le 64 ] ||
    die "ATTND_GROUP_SIZE: expected a rank count in [1, 64], got \"$size\""
  if [ -z "${ATTND_RANK:-}" ]; then
    host=${HOSTNAME:-$(hostname)}
    ordinal=${host##*-}
    [ "$ordinal" != "$host" ] && is_uint "$ordinal" ||
      die "ATTND_RANK is unset and the hostname \"$host\" does not end in -ORDINAL" \
        "(a StatefulSet pod's does); set ATTND_RANK"
    ATTND_RANK=$((ordinal + 0))
    export ATTND_RANK
  fi
  is_uint "$ATTND_RANK" && [ "$ATTND_RANK" -lt "$size" ] ||
    die "ATTND_RANK: expected a rank in [0, $size), got \"$ATTND_RANK\""
  if [ -z "${ATTND_GROUP:-}" ] && [ -z "${ATTND_GROUP_FILE:-}" ]; then
    template=${ATTND_GROUP_HOST_TEMPLATE:-}
    case $template in
      *"{rank}"*) ;;
      *) die "ATTND_GROUP_HOST_TEMPLATE: expected a host name with {rank} in it" \
        "(attnd-{rank}.attnd), got \"$template\"" ;;
    esac
    port=${ATTND_GROUP_PORT:-7800}
    is_uint "$port" && [ "$port" -le 65535 ] ||
      die "ATTND_GROUP_PORT: expected a port, got \"$port\""
    list=
    r=0
    while [ "$r" -lt "$size" ]; do
      if [ "$r" -eq "$ATTND_RANK" ]; then
        h=${ATTND_GROUP_BIND:-0.0.0.0}
      else
        h="${template%%"{rank}"*}$r${template#*"{rank}"}"
      fi
      list="${list:+$list,}$h:$port"
      r=$((r + 1))
    done
    ATTND_GROUP=$list
    export ATTND_GROUP
  fi
fi

exec "$ATTND_BIN" "$@"
