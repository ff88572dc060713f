// chprobe: the Go ClickHouse driver (the one under Grafana's ClickHouse plugin) over the
// gateway's ClickHouse HTTP interface. It connects, pings, lists the tables it may read,
// runs the query given and prints what it saw, one fact per line, for the test to check.
package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
)

func main() {
	if len(os.Args) != 5 && !(len(os.Args) == 6 && os.Args[5] == "lz4") {
		fmt.Fprintln(os.Stderr, "usage: chprobe HOST:PORT USER KEY QUERY [lz4]")
		os.Exit(2)
	}
	options := &clickhouse.Options{
		Addr:        []string{os.Args[1]},
		Protocol:    clickhouse.HTTP,
		Auth:        clickhouse.Auth{Database: "default", Username: os.Args[2], Password: os.Args[3]},
		DialTimeout: 10 * time.Second,
	}
	if len(os.Args) == 6 { // answers in ClickHouse's LZ4 blocks (compress=1), checksums checked
		options.Compression = &clickhouse.Compression{Method: clickhouse.CompressionLZ4}
	}
	conn, err := clickhouse.Open(options)
	if err != nil {
		fail("open", err)
	}
	ctx := context.Background()
	if err := conn.Ping(ctx); err != nil {
		fail("ping", err)
	}
	fmt.Println("ping ok")
	version, err := conn.ServerVersion()
	if err != nil {
		fail("version", err)
	}
	fmt.Printf("version %d.%d\n", version.Version.Major, version.Version.Minor)
	rows, err := conn.Query(ctx, "SELECT name FROM system.tables WHERE database = currentDatabase() ORDER BY name")
	if err != nil {
		fail("tables", err)
	}
	var tables []string
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			fail("tables scan", err)
		}
		tables = append(tables, name)
	}
	fmt.Println("tables " + strings.Join(tables, ","))
	rows, err = conn.Query(ctx, os.Args[4])
	if err != nil {
		fail("query", err)
	}
	cols := rows.ColumnTypes()
	names := make([]string, len(cols))
	for i, c := range cols {
		names[i] = c.Name() + ":" + c.DatabaseTypeName()
	}
	fmt.Println("columns " + strings.Join(names, ","))
	n := 0
	for rows.Next() {
		values := make([]any, len(cols))
		for i, c := range cols {
			values[i] = newOf(c.ScanType())
		}
		if err := rows.Scan(values...); err != nil {
			fail("query scan", err)
		}
		n++
		if n <= 3 {
			parts := make([]string, len(values))
			for i, v := range values {
				parts[i] = fmt.Sprint(deref(v))
			}
			fmt.Println("row " + strings.Join(parts, "|"))
		}
	}
	if err := rows.Err(); err != nil {
		fail("query rows", err)
	}
	fmt.Printf("rows %d\n", n)
}

func fail(what string, err error) {
	fmt.Printf("error %s: %v\n", what, err)
	os.Exit(1)
}
