package projections

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// assertT lets require run inside EventuallyWithT's collector.
type assertT = assert.CollectT
