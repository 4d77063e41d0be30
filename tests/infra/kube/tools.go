//go:build tools

// Package tools records the commands this module builds, so that `go mod tidy` keeps them:
// kube-apiserver and etcd for the apiserver-only tier (../kube.sh), and the node's binaries for
// the real single-node cluster (../cluster.sh).
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
