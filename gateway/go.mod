module github.com/cbroker/broker/gateway

go 1.26.8
