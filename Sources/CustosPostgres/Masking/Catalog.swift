import CustosCore
import Logging
import NIOConcurrencyHelpers
import NIOCore

/// Where result columns come from, per connection target: table OID → schema, table and column
/// names, learned with catalog queries on the gateway's own connection and cached. A miss asks
/// again, so a table created after the first lookup is found.
final class Catalog: Sendable {
    /// One table's names.
    struct Table: Sendable, Equatable {
        var oid: UInt32
        var schema: String
        var name: String
        /// Column names and type OIDs by attribute number, in order.
        var columns: [(number: Int16, name: String, type: UInt32)]

        func column(_ number: Int16) -> String? {
            columns.first { $0.number == number }?.name
        }

        static func == (a: Table, b: Table) -> Bool {
            a.oid == b.oid && a.schema == b.schema && a.name == b.name
                && a.columns.elementsEqual(b.columns) { $0.number == $1.number && $0.name == $1.name && $0.type == $1.type }
        }
    }

    private let tables = NIOLockedValueBox<[UInt32: Table]>([:])
    private let client = NIOLockedValueBox<BackendClient?>(nil)
    let target: PostgresTarget
    let logger: Logger

    init(target: PostgresTarget, logger: Logger) {
        self.target = target
        self.logger = logger
    }

    func cached(_ oid: UInt32) -> Table? {
        tables.withLockedValue { $0[oid] }
    }

    /// Whether every OID is known.
    func knows(_ oids: some Sequence<UInt32>) -> Bool {
        tables.withLockedValue { tables in oids.allSatisfy { $0 == 0 || tables[$0] != nil } }
    }

    /// Looks up the tables not yet known; the future completes on `eventLoop`.
    func resolve(_ oids: Set<UInt32>, on eventLoop: any EventLoop) -> EventLoopFuture<Void> {
        let missing = oids.filter { $0 != 0 && cached($0) == nil }.sorted()
        guard !missing.isEmpty else { return eventLoop.makeSucceededVoidFuture() }
        let list = missing.map(String.init).joined(separator: ",")
        return query(Self.columnsQuery(where: "a.attrelid IN (\(list))"), on: eventLoop).hop(to: eventLoop).map { _ in }
    }

    /// A table's columns by its name as written in SQL (resolved with the catalog connection's
    /// search path), for `COPY table TO`.
    func table(named name: String, on eventLoop: any EventLoop) -> EventLoopFuture<Table?> {
        let literal = "'" + name.replacingOccurrences(of: "'", with: "''") + "'"
        return query(Self.columnsQuery(where: "a.attrelid = pg_catalog.to_regclass(\(literal))"), on: eventLoop).hop(to: eventLoop).map { $0.first }
    }

    /// The result columns of a query, described (never run) on the catalog connection.
    func describe(_ sql: String, on eventLoop: any EventLoop) -> EventLoopFuture<[BackendMessage.Column]> {
        let messages: [FrontendMessage] = [
            .parse(.init(statement: "", query: sql, parameterTypes: [])), .describe(.init(kind: UInt8(ascii: "S"), name: "")), .sync,
        ]
        return connection(on: eventLoop).run(messages).flatMapThrowing { reply in
            // The message may quote the client's query (and its data): only the SQLSTATE is kept.
            if let error = reply.error { throw CatalogError(reason: "describe failed with SQLSTATE \(error.sqlstate ?? "?")") }
            return reply.columns
        }.hop(to: eventLoop)
    }

    private static func columnsQuery(where condition: String) -> String {
        """
        SELECT a.attrelid, n.nspname, c.relname, a.attnum, a.attname, a.atttypid FROM pg_catalog.pg_attribute a \
        JOIN pg_catalog.pg_class c ON c.oid = a.attrelid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
        WHERE \(condition) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attrelid, a.attnum
        """
    }

    /// Runs a columns query and caches what it found.
    private func query(_ sql: String, on eventLoop: any EventLoop) -> EventLoopFuture<[Table]> {
        let client = connection(on: eventLoop)
        return client.run([.query(sql)]).flatMapThrowing { reply in
            if let error = reply.error { throw CatalogError(reason: "catalog query failed: \(error.sqlstate ?? "?") \(error.message ?? "")") }
            var found: [UInt32: Table] = [:]
            var order: [UInt32] = []
            for row in reply.rows {
                guard row.count == 6, let oid = row[0].flatMap(UInt32.init), let schema = row[1], let name = row[2],
                    let number = row[3].flatMap(Int16.init), let column = row[4], let type = row[5].flatMap(UInt32.init)
                else { continue }
                if found[oid] == nil { order.append(oid) }
                found[oid, default: Table(oid: oid, schema: schema, name: name, columns: [])].columns.append((number, column, type))
            }
            self.tables.withLockedValue { tables in
                if tables.count > 50_000 { tables.removeAll() }  // bounded, whatever the schema churn
                tables.merge(found) { $1 }
            }
            return order.compactMap { found[$0] }
        }
    }

    /// Closes the catalog connection, if one was opened.
    func close() {
        client.withLockedValue { client in
            client?.close()
            client = nil
        }
    }

    /// The connection lives on the event loop of the session that first needed it.
    private func connection(on eventLoop: any EventLoop) -> BackendClient {
        client.withLockedValue { client in
            if let client { return client }
            let created = BackendClient(target: target, eventLoop: eventLoop, logger: logger)
            client = created
            return created
        }
    }
}
