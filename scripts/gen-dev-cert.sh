#!/usr/bin/env bash
# Regenerates the development TLS material in certs-dev/: a local CA (ca.pem, trusted by tests and, if you
# like, by your browser) and a certificate for localhost / 127.0.0.1 / ::1 signed by it (cert.pem, key.pem).
# Development only: the CA key is thrown away, and nothing here is secret.
set -euo pipefail
cd "$(dirname "$0")/../certs-dev"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
  -subj "/CN=socket-identity development CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -keyout "$tmp/ca.key" -out ca.pem 2>/dev/null

openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
  -keyout key.pem -out "$tmp/cert.csr" 2>/dev/null
cat > "$tmp/ext.cnf" <<'EXT'
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1
EXT
openssl x509 -req -in "$tmp/cert.csr" -CA ca.pem -CAkey "$tmp/ca.key" -CAcreateserial \
  -days 825 -extfile "$tmp/ext.cnf" -out cert.pem 2>/dev/null
rm -f ca.srl
chmod 644 cert.pem ca.pem key.pem
echo "certs-dev/: ca.pem, cert.pem (localhost, 127.0.0.1, ::1; expires $(openssl x509 -enddate -noout -in cert.pem | cut -d= -f2)), key.pem"
