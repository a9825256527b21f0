// Package procscan reads /proc and /run/netns to find which process holds
// each socket (by inode, walking /proc/PID/fd) and every network namespace
// on the host, with a name that stays the same for the namespace's life.
package procscan
