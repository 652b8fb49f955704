module github.com/cbroker/broker/cmd

go 1.26.8
