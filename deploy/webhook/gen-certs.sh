#!/bin/sh
# Creates the webhook's serving certificate without cert-manager: a private
# CA and a certificate for kube-ipam-webhook.kube-system.svc, stored in the
# Secret kube-system/kube-ipam-webhook-tls, and the CA written into the
# caBundle of the ValidatingWebhookConfiguration "kube-ipam".
#
#   deploy/webhook/gen-certs.sh            # create/replace Secret, patch caBundle
#   DAYS=365 NAMESPACE=kube-system deploy/webhook/gen-certs.sh
#
# Needs openssl and kubectl. Apply service.yaml and
# validatingwebhookconfiguration.yaml first. Rerun before the certificate
# expires (DAYS, default 825); the webhook picks up the new files by itself.
set -eu
NAMESPACE=${NAMESPACE:-kube-system}
SERVICE=${SERVICE:-kube-ipam-webhook}
SECRET=${SECRET:-kube-ipam-webhook-tls}
WEBHOOK=${WEBHOOK:-kube-ipam}
DAYS=${DAYS:-825}

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

kubectl -n "$NAMESPACE" create secret tls "$SECRET" --cert=tls.crt --key=tls.key \
  --dry-run=client -o yaml | kubectl apply -f -
ca=$(base64 < ca.crt | tr -d '\n')
kubectl patch validatingwebhookconfiguration "$WEBHOOK" --type=json \
  -p "[{\"op\": \"replace\", \"path\": \"/webhooks/0/clientConfig/caBundle\", \"value\": \"$ca\"}]"
echo "Secret $NAMESPACE/$SECRET written; caBundle of ValidatingWebhookConfiguration $WEBHOOK set."
