// composecheck loads a Compose file with compose-go, the loader `docker compose` itself uses:
// schema validation, interpolation, anchors and merges, then checks the project's own rules
// (every long-running service has a healthcheck; depends_on uses conditions). It prints one line per
// service and exits non-zero with the reason on the first problem. Needs no Docker engine.
//
//	go run ./docker/tools/composecheck docker/compose.yaml
package main

import (
	"context"
	"fmt"
	"os"
	"sort"

	"github.com/compose-spec/compose-go/v2/cli"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: composecheck COMPOSE_FILE")
		os.Exit(2)
	}
	ctx := context.Background()
	opts, err := cli.NewProjectOptions([]string{os.Args[1]}, cli.WithOsEnv, cli.WithDotEnv, cli.WithName("llm-lifecycle"))
	if err != nil {
		fail(err)
	}
	project, err := opts.LoadProject(ctx)
	if err != nil {
		fail(err)
	}
	names := make([]string, 0, len(project.Services))
	for name := range project.Services {
		names = append(names, name)
	}
	sort.Strings(names)
	problems := 0
	for _, name := range names {
		svc := project.Services[name]
		oneShot := svc.Restart == "no"
		health := svc.HealthCheck != nil && !svc.HealthCheck.Disable
		if !oneShot && !health && svc.Image != "" && svc.Build == nil {
			fmt.Printf("%s: long-running service without a healthcheck\n", name)
			problems++
		}
		for dep, cond := range svc.DependsOn {
			if cond.Condition == "" {
				fmt.Printf("%s: depends_on %s without a condition\n", name, dep)
				problems++
			}
		}
		fmt.Printf("service %-22s image=%s healthcheck=%v one-shot=%v depends_on=%d\n", name, svc.Image, health, oneShot, len(svc.DependsOn))
	}
	fmt.Printf("volumes=%d configs=%d services=%d\n", len(project.Volumes), len(project.Configs), len(project.Services))
	if problems > 0 {
		os.Exit(1)
	}
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "compose file invalid: %v\n", err)
	os.Exit(1)
}
