#!/bin/sh
# Creates the webhook's serving certificate without cert-manager: a private
# CA and a certificate for kube-ipam-webhook.kube-ipam.svc, stored in the
# Secret kube-ipam/kube-ipam-webhook-tls (tls.crt, tls.key, and the CA as
# ca.crt), and the CA written into the caBundle of the
# ValidatingWebhookConfiguration "kube-ipam" when it exists.
#
#   deploy/webhook/gen-certs.sh              # create/replace the Secret, patch caBundle if possible
#   PATCH_ONLY=1 deploy/webhook/gen-certs.sh # only copy the Secret's ca.crt into the caBundle
#   DAYS=365 NAMESPACE=kube-ipam deploy/webhook/gen-certs.sh
#
# Install order (deploy/README.md): run it before the controller starts (its
# pods mount the Secret), apply validatingwebhookconfiguration.yaml once the
# controller is Ready, then run it again with PATCH_ONLY=1. Rerun it (without
# PATCH_ONLY) before the certificate expires (DAYS, default 825); the webhook
# picks up the new files by itself. Needs openssl and kubectl.
set -eu
NAMESPACE=${NAMESPACE:-kube-ipam}
SERVICE=${SERVICE:-kube-ipam-webhook}
SECRET=${SECRET:-kube-ipam-webhook-tls}
WEBHOOK=${WEBHOOK:-kube-ipam}
DAYS=${DAYS:-825}

patch_ca() { # $1: base64 of the CA bundle
  kubectl patch validatingwebhookconfiguration "$WEBHOOK" --type=json \
    -p "[{\"op\": \"replace\", \"path\": \"/webhooks/0/clientConfig/caBundle\", \"value\": \"$1\"}]"
  echo "caBundle of ValidatingWebhookConfiguration $WEBHOOK set."
}

if [ -n "${PATCH_ONLY:-}" ]; then
  ca=$(kubectl -n "$NAMESPACE" get secret "$SECRET" -o jsonpath='{.data.ca\.crt}')
  [ -n "$ca" ] || { echo "Secret $NAMESPACE/$SECRET has no ca.crt: run without PATCH_ONLY first" >&2; exit 1; }
  patch_ca "$ca"
  exit 0
fi

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cd "$dir"

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$DAYS" \
  -subj "/CN=kube-ipam-webhook-ca" -keyout ca.key -out ca.crt 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -subj "/CN=$SERVICE.$NAMESPACE.svc" -keyout tls.key -out tls.csr 2>/dev/null
cat > ext.cnf <<EXT
subjectAltName = DNS:$SERVICE.$NAMESPACE.svc, DNS:$SERVICE.$NAMESPACE.svc.cluster.local
extendedKeyUsage = serverAuth
keyUsage = digitalSignature
EXT
openssl x509 -req -in tls.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days "$DAYS" \
  -extfile ext.cnf -out tls.crt 2>/dev/null

kubectl -n "$NAMESPACE" create secret generic "$SECRET" --type=kubernetes.io/tls \
  --from-file=tls.crt --from-file=tls.key --from-file=ca.crt \
  --dry-run=client -o yaml | kubectl apply -f -
echo "Secret $NAMESPACE/$SECRET written."
if kubectl get validatingwebhookconfiguration "$WEBHOOK" >/dev/null 2>&1; then
  patch_ca "$(base64 < ca.crt | tr -d '\n')"
else
  echo "ValidatingWebhookConfiguration $WEBHOOK does not exist yet: apply it once the controller is Ready, then run PATCH_ONLY=1 $0"
fi
