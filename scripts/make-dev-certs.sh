#!/usr/bin/env bash
# Makes a development CA and certificates for TLS and mutual TLS, with openssl only.
#
#   scripts/make-dev-certs.sh DIR [CLIENT ...]      (clients default to: admin app)
#
# Writes into DIR:
#   ca.crt ca.key               the development CA (also signs client certificates)
#   server.crt server.key       for kms serve --tls-cert/--tls-key; SAN localhost, 127.0.0.1, ::1
#   <client>.crt <client>.key   per CLIENT: URI SAN spiffe://kms.dev/<client>, CN <client>
#   cn-only.crt cn-only.key     a client certificate with a CN and no URI SAN: refused unless the
#                               server has KMS_CN_IDENTITIES=true, then the identity cn:cn-only
#   expired.crt expired.key     a client certificate of the CA that expired in 2020
#   other-ca.crt other-ca.key, stranger.crt stranger.key   a second CA and a client it signed
# Never use these outside development: the keys are unencrypted and the CA is not protected.
set -euo pipefail
out=${1:?usage: make-dev-certs.sh DIR [CLIENT ...]}
shift
clients=("$@")
[ ${#clients[@]} -gt 0 ] || clients=(admin app)
mkdir -p "$out"
cd "$out"
days=825

ec_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; chmod 600 "$1"; }

make_ca() { # name subject
    ec_key "$1.key"
    openssl req -x509 -new -key "$1.key" -sha256 -days 3650 -subj "$2" -out "$1.crt" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
}

sign() { # name subject extensions ca
    ec_key "$1.key"
    openssl req -new -key "$1.key" -subj "$2" -out "$1.csr"
    printf '%s\n' "$3" > "$1.ext"
    openssl x509 -req -in "$1.csr" -CA "$4.crt" -CAkey "$4.key" -CAcreateserial -days "$days" -sha256 \
        -extfile "$1.ext" -out "$1.crt" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
}

client_ext() { # uri (may be empty)
    printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth'
    [ -z "$1" ] || printf '\nsubjectAltName=URI:%s' "$1"
}

make_ca ca "/CN=KMS development CA"
sign server "/CN=localhost" "$(printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1')" ca
for client in "${clients[@]}"; do
    sign "$client" "/CN=$client" "$(client_ext "spiffe://kms.dev/$client")" ca
done
sign cn-only "/CN=cn-only" "$(client_ext "")" ca
make_ca other-ca "/CN=Some other CA"
sign stranger "/CN=stranger" "$(client_ext "spiffe://elsewhere/stranger")" other-ca

# An expired client certificate: `openssl x509` cannot backdate, `openssl ca` can.
ec_key expired.key
openssl req -new -key expired.key -subj "/CN=expired" -out expired.csr
mkdir -p ca-db && : > ca-db/index.txt && echo 1000 > ca-db/serial
cat > ca-db/openssl.cnf <<CNF
[ca]
default_ca = dev
[dev]
database = ca-db/index.txt
serial = ca-db/serial
new_certs_dir = ca-db
certificate = ca.crt
private_key = ca.key
default_md = sha256
policy = anything
copy_extensions = none
[anything]
commonName = supplied
[client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
subjectAltName = URI:spiffe://kms.dev/expired
CNF
openssl ca -batch -config ca-db/openssl.cnf -extensions client -startdate 20200101000000Z -enddate 20200102000000Z \
    -in expired.csr -out expired.crt >/dev/null 2>&1
rm -rf expired.csr ca-db ca.srl other-ca.srl
echo "certificates in $out" >&2
