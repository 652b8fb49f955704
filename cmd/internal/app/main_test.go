package app_test

import "github.com/stretchr/testify/assert"

type assertT = assert.CollectT
