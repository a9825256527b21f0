package e2e

import (
	"testing"

	"github.com/tcpstate/tcpstate_exporter/internal/exportertest"
)

// TestMain removes the programs exportertest builds once the tests are done.
func TestMain(m *testing.M) { exportertest.Main(m) }
