package cli

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Where kube-ipamctl's Kubernetes API identity comes from (KubeRESTConfig's
// source, for messages).
const (
	SourceFlag      = "--kubeconfig"
	SourceIPAM      = "ipam.kubeConfig"
	SourceInCluster = "in-cluster"
)

// inClusterConfig is client-go's, which reads the service-account token
// and CA at their fixed paths under
// /var/run/secrets/kubernetes.io/serviceaccount; incluster_test.go runs
// the binary in a mount namespace to give it one.
var inClusterConfig = rest.InClusterConfig

// KubeRESTConfig is the one rule by which every kube-ipamctl command that
// needs the Kubernetes API (check, release and gc for pods and
// StatefulSets; any command on a network of the Kubernetes API store:
// list, reserve, migrate, ...) finds its identity, for the network whose
// ipam.kubeConfig is ipamPath:
//
//  1. --kubeconfig FILE (flagPath), when given: the operator said so, so a
//     missing or broken file is an error, never silently another identity;
//  2. else ipam.kubeConfig, when that file exists (kube-ipamctl run on a
//     node, which has the plugin's kubeconfig);
//  3. else the pod's in-cluster configuration (KUBERNETES_SERVICE_HOST and
//     _PORT set, service-account token mounted): kube-ipamctl run with
//     kubectl exec in the controller's pod, where ipam.kubeConfig is a node
//     path that does not exist;
//  4. else an error naming all three.
//
// source says which one was used: SourceFlag, SourceIPAM or
// SourceInCluster, with the file for the first two.
func KubeRESTConfig(flagPath, ipamPath string) (rc *rest.Config, source string, err error) {
	if flagPath != "" {
		rc, err := clientcmd.BuildConfigFromFlags("", flagPath)
		if err != nil {
			return nil, "", fmt.Errorf("%s %s: %w", SourceFlag, flagPath, err)
		}
		return rc, SourceFlag + " " + flagPath, nil
	}
	var why string
	switch _, err := os.Stat(ipamPath); {
	case ipamPath == "":
		why = SourceIPAM + " is not set"
	case err == nil:
		rc, err := clientcmd.BuildConfigFromFlags("", ipamPath)
		if err != nil {
			return nil, "", fmt.Errorf("%s %s: %w", SourceIPAM, ipamPath, err)
		}
		return rc, SourceIPAM + " " + ipamPath, nil
	case errors.Is(err, fs.ErrNotExist):
		why = fmt.Sprintf("%s %s does not exist", SourceIPAM, ipamPath)
	default:
		// There but unreadable (permissions): using another identity
		// instead would hide the mistake.
		return nil, "", fmt.Errorf("%s %s: %w", SourceIPAM, ipamPath, err)
	}
	rc, err = inClusterConfig()
	if err != nil {
		return nil, "", fmt.Errorf("no Kubernetes API configuration: no %s given, %s, and no %s configuration (%v)",
			SourceFlag, why, SourceInCluster, err)
	}
	return rc, SourceInCluster, nil
}
