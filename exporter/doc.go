// Package exporter turns the collector's snapshots into Prometheus metrics
// and serves them: the metric descriptions, the histograms fed by the poll
// loop, and the HTTP side (landing page and the metrics endpoint).
package exporter
