// The ClickHouse JDBC driver (com.clickhouse:clickhouse-jdbc 0.10.0) against the gateway's
// ClickHouse HTTP interface: connect, list the tables through DatabaseMetaData, run the
// query given, then a refused one; one fact per line for tests/test_clickhouse_http.py.
// Run: java -cp <the driver's jars> Probe.java URL USER KEY QUERY (or compiled: javac, then java Probe)
import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.DriverManager;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;

public class Probe {
    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        props.setProperty("user", args[1]);
        props.setProperty("password", args[2]);
        try (Connection conn = DriverManager.getConnection(args[0], props)) {
            DatabaseMetaData meta = conn.getMetaData();
            System.out.println("product " + meta.getDatabaseProductName() + " " + meta.getDatabaseProductVersion());
            List<String> tables = new ArrayList<>();
            try (ResultSet rs = meta.getTables(null, "default", "%", null)) {
                while (rs.next()) {
                    tables.add(rs.getString("TABLE_NAME"));
                }
            }
            System.out.println("tables " + String.join(",", tables));
            List<String> columns = new ArrayList<>();
            try (ResultSet rs = meta.getColumns(null, "default", "trade", "%")) {
                while (rs.next()) {
                    columns.add(rs.getString("COLUMN_NAME") + ":" + rs.getString("TYPE_NAME"));
                }
            }
            System.out.println("columns " + String.join(",", columns));
            try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery(args[3])) {
                int n = rs.getMetaData().getColumnCount();
                while (rs.next()) {
                    List<String> row = new ArrayList<>();
                    for (int i = 1; i <= n; i++) {
                        row.add(rs.getString(i));
                    }
                    System.out.println("row " + String.join("|", row));
                }
            }
            try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery("SELECT exchange FROM trade")) {
                System.out.println("not refused");
            } catch (SQLException e) {
                System.out.println("refused " + e.getMessage().replace('\n', ' '));
            }
        }
    }
}
