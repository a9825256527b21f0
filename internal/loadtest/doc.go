// Package loadtest puts an exporter under load for tests: connection churn
// and standing connections in a test's network namespace, concurrent
// scrapers, and a process's descriptors, threads and memory read from /proc.
package loadtest
