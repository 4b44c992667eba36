#!/usr/bin/env bash
# Test certificates for the TLS suites, made fresh by each test with
# Debian's openssl (EC P-256, valid 2 days):
#   ca1.pem ca2.pem                       two unrelated CAs
#   server.pem server.key                 CA1, for localhost and 127.0.0.1
#   server2.pem server2.key               CA2, the same names (a reload)
#   client.pem client.key                 CA1, CN client-a (SAN DNS client-a)
#   stranger.pem stranger.key             CA2, CN client-b
# Usage: mkcerts.sh DIR
set -euo pipefail
d=$1
mkdir -p "$d"
cd "$d"
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
ca() {
  key "$1.key"
  openssl req -x509 -new -key "$1.key" -out "$1.pem" -days 2 -subj "/CN=attnd test $1" \
    2>/dev/null
}
cert() { # name ca cn san
  key "$1.key"
  openssl req -new -key "$1.key" -out "$1.csr" -subj "/CN=$3" 2>/dev/null
  printf 'subjectAltName=%s\n' "$4" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2.key" -CAcreateserial -out "$1.pem" \
    -days 2 -extfile "$1.ext" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
ca ca1
ca ca2
cert server ca1 localhost "DNS:localhost,IP:127.0.0.1"
cert server2 ca2 localhost "DNS:localhost,IP:127.0.0.1"
cert client ca1 client-a "DNS:client-a"
cert stranger ca2 client-b "DNS:client-b"
chmod 600 ./*.key
