// Package statezoo builds real loopback TCP sockets in every documented TCP
// state inside a test's network namespace and says exactly how many of each
// the namespace holds. It is for integration tests only and needs root.
package statezoo
