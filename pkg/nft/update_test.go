package nft

import (
	"testing"
	"time"
)

func TestUpdate(t *testing.T) {
	// nft --debug=netlink add rule ip t c update @d { ip saddr }
	checkStmt(t, IP, Rule{Update{Key: []Field{IPSaddr}, Set: "d"}}, "update @d { ip saddr }", `
[ payload load 4b @ network header + 12 => reg 1 ]
[ dynset update reg_key 1 set d ]`)
	// nft --debug=netlink add rule ip t c update @d { ip saddr timeout 1h }
	checkStmt(t, IP, Rule{Update{Key: []Field{IPSaddr}, Set: "d", Timeout: time.Hour}}, "update @d { ip saddr timeout 1h }", `
[ payload load 4b @ network header + 12 => reg 1 ]
[ dynset update reg_key 1 set d timeout 3600000ms ]`)
}
