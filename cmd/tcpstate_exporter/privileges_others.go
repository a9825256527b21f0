//go:build !linux

package main

import "log/slog"

// dropPrivileges does nothing where there are no Linux capabilities to drop.
func dropPrivileges(keepNetNSEntry bool, logger *slog.Logger) error { return nil }

// canBindPrivilegedPorts says whether the process may bind ports below
// 1024; without Linux capabilities it cannot tell, and says no.
func canBindPrivilegedPorts() bool { return false }
