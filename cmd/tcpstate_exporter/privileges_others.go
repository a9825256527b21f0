//go:build !linux

package main

import "log/slog"

// dropPrivileges does nothing where there are no Linux capabilities to drop.
func dropPrivileges(keepNetNSEntry bool, logger *slog.Logger) error { return nil }
