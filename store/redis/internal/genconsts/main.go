// Command genconsts writes store/redis/lua/consts.lua from the Go values in
// store/redis/consts.go (run by go generate ./store/redis).
package main

import (
	"log"
	"os"

	redisstore "github.com/semaphored/semaphored/store/redis"
)

func main() {
	// go generate runs in the package's directory.
	if err := os.WriteFile("lua/consts.lua", []byte(redisstore.LuaConsts()), 0o644); err != nil {
		log.Fatal(err)
	}
}
