module github.com/cbroker/broker/services

go 1.26.8
