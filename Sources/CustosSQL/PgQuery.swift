import CPgQuery

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Thin, allocation-conscious wrappers over libpg_query's C API. Every result is freed before the
/// wrapper returns, so no libpg_query memory escapes; callers get Swift values (or work inside a
/// closure while a result is alive, for the parse tree, to avoid copying it).
///
/// libpg_query keeps its memory contexts in thread-local storage, so these calls are safe from any
/// thread, concurrently.
enum PgQuery {
    /// One statement's byte range in the input, as the parser saw it (`stmt_len` 0 means "to the end").
    struct StatementRange: Equatable {
        var location: Int
        var length: Int
    }

    /// `pg_query_normalize`: literals replaced by `$n`, or nil when the text does not parse.
    static func normalize(_ sql: UnsafePointer<CChar>) -> String? {
        let result = pg_query_normalize(sql)
        defer { pg_query_free_normalize_result(result) }
        guard result.error == nil, let text = result.normalized_query else { return nil }
        return String(cString: text)
    }

    /// `pg_query_fingerprint` as the 16-digit hex string libpg_query prints, or "" on error.
    static func fingerprint(_ sql: UnsafePointer<CChar>) -> String {
        let result = pg_query_fingerprint(sql)
        defer { pg_query_free_fingerprint_result(result) }
        guard result.error == nil, let text = result.fingerprint_str else { return "" }
        return String(cString: text)
    }

    /// `pg_query_split_with_parser`: each statement's byte range, or nil when the text does not parse.
    static func split(_ sql: UnsafePointer<CChar>) -> [StatementRange]? {
        let result = pg_query_split_with_parser(sql)
        defer { pg_query_free_split_result(result) }
        guard result.error == nil else { return nil }
        var ranges: [StatementRange] = []
        ranges.reserveCapacity(Int(result.n_stmts))
        for index in 0..<Int(result.n_stmts) {
            guard let statement = result.stmts?[index]?.pointee else { return nil }
            ranges.append(StatementRange(location: Int(statement.stmt_location), length: Int(statement.stmt_len)))
        }
        return ranges
    }

    /// Runs `body` over the JSON parse tree's bytes while libpg_query's result is alive (no copy);
    /// returns nil without calling `body` when the text does not parse.
    static func withParseTree<T>(_ sql: UnsafePointer<CChar>, _ body: (UnsafeBufferPointer<UInt8>) -> T) -> T? {
        let result = pg_query_parse(sql)
        defer { pg_query_free_parse_result(result) }
        guard result.error == nil, let tree = result.parse_tree else { return nil }
        let length = strlen(tree)
        return tree.withMemoryRebound(to: UInt8.self, capacity: length) { bytes in
            body(UnsafeBufferPointer(start: bytes, count: length))
        }
    }
}
