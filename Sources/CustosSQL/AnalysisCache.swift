import CustosCore
import Synchronization

/// One statement's analysis without its text: what the cache keeps. Everything here is the same
/// for every statement that normalizes to the same text (the walker marks the exceptions, such as
/// `set_config('role', …)`, whose analyses are never stored) — except, rarely, the fingerprint:
/// libpg_query's fingerprint covers a few strings that normalization hides (role passwords,
/// user-mapping options, subscription connection strings, a unary minus before a string literal),
/// so a hit carries the fingerprint of the first such statement seen. Policy never depends on it.
struct CachedStatement: Sendable {
    var kind: String
    var tablesRead: [String]
    var tablesWritten: [String]
    var functions: [String]
    var flags: Set<StatementInfo.Flag>
    var readOnly: Bool
    var normalized: String
    var fingerprint: String
    var preparedName: String?
    var preparedKind: String?

    init(_ facts: StatementFacts, normalized: String, fingerprint: String) {
        kind = facts.kind
        tablesRead = facts.tablesRead
        tablesWritten = facts.tablesWritten
        functions = facts.functions
        flags = facts.flags
        readOnly = facts.readOnly
        preparedName = facts.preparedName
        preparedKind = facts.preparedKind
        self.normalized = normalized
        self.fingerprint = fingerprint
    }

    func info(text: String) -> StatementInfo {
        StatementInfo(
            kind: kind, tablesRead: tablesRead, tablesWritten: tablesWritten, functions: functions, flags: flags,
            readOnly: readOnly, text: text, normalized: normalized, fingerprint: fingerprint, preparedName: preparedName,
            preparedKind: preparedKind
        )
    }
}

/// A cache entry: the input's statements, and whether the key is also the text they were
/// analysed from (`verbatim`: an input without literals, which normalizes to itself).
struct CacheEntry: Sendable {
    var statements: [CachedStatement]
    var verbatim: Bool
}

/// A bounded map from a whole input's normalized text to its statements' analyses. Keys compare
/// as bytes (``ExactText``): texts that differ only in Unicode normalization name different
/// tables to PostgreSQL.
///
/// Keyed by normalized text because pgbench-style traffic sends a new literal every time, so exact
/// text rarely repeats. Eviction is two generations rather than LRU: inserts go to `current`; when
/// it holds half the capacity it becomes `previous` and a new `current` starts; a hit in `previous`
/// is promoted. Hot entries survive, memory stays under `capacity` entries, and no per-hit
/// bookkeeping is needed under the lock.
final class AnalysisCache: Sendable {
    private typealias Generation = [ExactText: CacheEntry]
    private struct Generations {
        var current: Generation = [:]
        var previous: Generation = [:]
    }

    /// Inputs whose normalized text is longer than this are not cached: they are rare and would
    /// make the cache's memory unbounded in practice (a bulk INSERT's text can be megabytes).
    static let maximumKeyBytes = 8192

    let capacity: Int
    private let generations = Mutex(Generations())

    init(capacity: Int) {
        self.capacity = max(capacity, 2)
    }

    func lookup(_ text: String) -> CacheEntry? {
        let key = ExactText(text)
        var retired: Generation = [:]
        let found: CacheEntry? = generations.withLock { state in
            if let hit = state.current[key] { return hit }
            guard let hit = state.previous[key] else { return nil }
            retired = Self.insert(&state, key: key, value: hit, generationSize: capacity / 2)
            return hit
        }
        _ = retired  // released here, outside the lock
        return found
    }

    func store(_ text: String, _ value: CacheEntry) {
        guard text.utf8.count <= Self.maximumKeyBytes else { return }
        let key = ExactText(text)
        var retired: Generation = [:]
        generations.withLock { state in
            retired = Self.insert(&state, key: key, value: value, generationSize: capacity / 2)
        }
        _ = retired
    }

    var count: Int {
        generations.withLock { $0.current.count + $0.previous.count }
    }

    /// Inserts into `current`, rotating generations when it is full; returns the dropped generation
    /// so that the caller frees it after releasing the lock.
    private static func insert(
        _ state: inout Generations, key: ExactText, value: CacheEntry, generationSize: Int
    ) -> Generation {
        var retired: Generation = [:]
        if state.current.count >= generationSize, state.current[key] == nil {
            retired = state.previous
            state.previous = state.current
            state.current = [:]
            state.current.reserveCapacity(generationSize)
        }
        state.current[key] = value
        return retired
    }
}
