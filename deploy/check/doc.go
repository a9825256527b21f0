// Package check holds tests that feed what deploy/ ships to the types of
// the tools its users run: the Grafana Foundation SDK's dashboard, and
// Kubernetes' and the Prometheus Operator's API types. It is a module of
// its own so that those dependencies stay out of the exporter's go.mod.
package check
