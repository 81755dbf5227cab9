package quota_test

import "flag"

// update makes the golden tests rewrite their files in testdata:
// go test -run 'Golden|Migrate' -update .
var update = flag.Bool("update", false, "rewrite the golden files in testdata")
