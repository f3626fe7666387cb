// Command kube-controller-manager is the upstream kube-controller-manager, built from the pinned k8s.io/kubernetes
// module (the node of `kubegate dev-cluster up --node`).
package main

import (
	"os"
	_ "time/tzdata" // CronJob time zones

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-controller-manager/app"
)

func main() {
	os.Exit(cli.Run(app.NewControllerManagerCommand()))
}
