// Package browsertest renders the exporter's pages in a real browser
// (Debian's chromium, driven by chromedp). It is a module of its own so
// that chromedp stays out of the exporter's go.mod.
package browsertest
