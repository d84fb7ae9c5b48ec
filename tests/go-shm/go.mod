module weft.dev/tests/go-shm

go 1.21
