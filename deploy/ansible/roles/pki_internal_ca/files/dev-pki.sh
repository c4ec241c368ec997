#!/usr/bin/env bash
# The openssl side of the DEVELOPMENT-ONLY Ansible role pki_internal_ca.
# Production brings its own PKI; nothing here is fit to issue production
# certificates.
#
#   dev-pki.sh ca DIR GENERATION NAME DAYS KEY_TYPE
#       Creates DIR/ca-genGENERATION/{ca.key,ca.crt} unless both exist.
#       Prints "created" or "exists".
#   dev-pki.sh issue DIR GENERATION HOST OUT_DIR DAYS RENEW_SECONDS KEY_TYPE FORCE CSR SANS
#       Makes sure OUT_DIR/host.crt is a certificate for HOST from the CA
#       generation GENERATION with exactly SANS (comma-separated, DNS:/IP:/URI:)
#       and more than RENEW_SECONDS of validity left, for OUT_DIR/host.key
#       (generated when missing) or, when CSR is not empty, for the public key
#       of that certificate request. The subject (CN=HOST), the SANs and the
#       extensions are decided here; whatever the request asks for is
#       ignored. Prints "ok" or "issued: REASON".
set -euo pipefail
umask 077

keygen() {
    case "$1" in
    ec) openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$2" 2>/dev/null ;;
    rsa) openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:3072 -out "$2" 2>/dev/null ;;
    *)
        echo "unknown key type '$1' (ec or rsa)" >&2
        exit 2
        ;;
    esac
}

pubkey_of() {
    # pubkey_of cert|key|csr FILE: the public key, PEM.
    case "$1" in
    cert) openssl x509 -in "$2" -noout -pubkey ;;
    key) openssl pkey -in "$2" -pubout ;;
    csr) openssl req -in "$2" -noout -pubkey ;;
    esac
}

cmd_ca() {
    local dir="$1" gen="$2" name="$3" days="$4" type="$5"
    local d="$dir/ca-gen$gen"
    if [ -s "$d/ca.crt" ] && [ -s "$d/ca.key" ]; then
        echo exists
        return
    fi
    mkdir -p "$d"
    keygen "$type" "$d/ca.key.tmp"
    openssl req -x509 -new -key "$d/ca.key.tmp" -sha256 -days "$days" \
        -subj "/O=mtlsd dev PKI/CN=$name generation $gen" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -out "$d/ca.crt.tmp"
    chmod 0644 "$d/ca.crt.tmp"
    mv "$d/ca.key.tmp" "$d/ca.key"
    mv "$d/ca.crt.tmp" "$d/ca.crt"
    echo created
}

cmd_issue() {
    local dir="$1" gen="$2" host="$3" out="$4" days="$5" renew="$6" type="$7"
    local force="$8" csr="$9" sans="${10}"
    local ca="$dir/ca-gen$gen"
    local key="$out/host.key" crt="$out/host.crt" spec="$out/host.spec"
    [ -s "$ca/ca.crt" ] || {
        echo "no CA generation $gen in $dir" >&2
        exit 1
    }
    mkdir -p "$out"
    local want reason=""
    want="$(printf 'host=%s\ngeneration=%s\nca=%s\nsans=%s\nkey_source=%s\n' \
        "$host" "$gen" "$(openssl x509 -in "$ca/ca.crt" -noout -fingerprint -sha256)" \
        "$sans" "${csr:-generated}")"

    local request_key="$key" request_kind=key
    if [ -n "$csr" ]; then
        request_key="$csr"
        request_kind=csr
        openssl req -in "$csr" -noout -verify 2>/dev/null || {
            echo "$csr: not a valid certificate request" >&2
            exit 1
        }
    elif [ ! -s "$key" ]; then
        keygen "$type" "$key"
        reason="new key"
    fi

    if [ -z "$reason" ] && [ ! -s "$crt" ]; then reason="no certificate yet"; fi
    if [ -z "$reason" ] && [ "$force" = true ]; then reason="forced"; fi
    if [ -z "$reason" ] && [ "$want" != "$(cat "$spec" 2>/dev/null)" ]; then
        reason="SANs, host or issuing CA changed"
    fi
    if [ -z "$reason" ] && ! openssl verify -CAfile "$ca/ca.crt" "$crt" >/dev/null 2>&1; then
        reason="does not chain to CA generation $gen"
    fi
    if [ -z "$reason" ] && ! openssl x509 -in "$crt" -noout -checkend "$renew" >/dev/null; then
        reason="expires within the renewal window"
    fi
    if [ -z "$reason" ] && [ "$(pubkey_of cert "$crt")" != "$(pubkey_of "$request_kind" "$request_key")" ]; then
        reason="certificate and key do not match"
    fi
    if [ -z "$reason" ]; then
        echo ok
        return
    fi

    local tmp
    tmp="$(mktemp -d "$out/.issue.XXXXXX")"
    # shellcheck disable=SC2064 # expand now: tmp is local
    trap "rm -rf '$tmp'" EXIT
    if [ -z "$csr" ]; then
        # A request whose own subject and SANs are deliberately wrong: the
        # certificate below must not take anything from it but the key.
        openssl req -new -key "$key" -subj "/CN=ignored-by-the-ca" \
            -addext "subjectAltName=DNS:ignored-by-the-ca.invalid" -out "$tmp/req.csr"
        csr="$tmp/req.csr"
    fi
    local usage=digitalSignature
    if [ "$(openssl req -in "$csr" -noout -text | grep -c 'rsaEncryption')" -gt 0 ]; then
        usage="digitalSignature,keyEncipherment"
    fi
    cat >"$tmp/ext.cnf" <<EXT
basicConstraints = critical,CA:FALSE
keyUsage = critical,$usage
extendedKeyUsage = serverAuth,clientAuth
subjectAltName = $sans
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EXT
    openssl x509 -req -in "$csr" -CA "$ca/ca.crt" -CAkey "$ca/ca.key" \
        -set_serial "0x1$(openssl rand -hex 15)" -days "$days" -sha256 \
        -subj "/CN=$host" -extfile "$tmp/ext.cnf" -out "$tmp/host.crt" 2>/dev/null
    chmod 0644 "$tmp/host.crt"
    mv "$tmp/host.crt" "$crt"
    printf '%s\n' "$want" >"$spec"
    [ ! -f "$key" ] || chmod 0600 "$key"
    echo "issued: $reason"
}

case "${1:-}" in
ca)
    [ $# -eq 6 ] || { echo "usage: $0 ca DIR GENERATION NAME DAYS KEY_TYPE" >&2; exit 2; }
    shift
    cmd_ca "$@"
    ;;
issue)
    [ $# -eq 11 ] || { echo "usage: $0 issue DIR GENERATION HOST OUT_DIR DAYS RENEW_SECONDS KEY_TYPE FORCE CSR SANS" >&2; exit 2; }
    shift
    cmd_issue "$@"
    ;;
*)
    echo "usage: $0 ca|issue ..." >&2
    exit 2
    ;;
esac
