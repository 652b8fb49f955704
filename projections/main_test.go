package projections

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"go.uber.org/goleak"

	"github.com/cbroker/broker/internal/natstest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, natstest.IgnoreObjectStoreRace())
}

// assertT lets require run inside EventuallyWithT's collector.
type assertT = assert.CollectT
