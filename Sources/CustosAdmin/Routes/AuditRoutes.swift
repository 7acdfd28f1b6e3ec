import CustosCore
import Foundation
import Hummingbird
import Logging

/// The public half of the checkpoint signing key, as `GET /api/v1/evidence/key` serves it.
public struct EvidenceKey: Sendable, Encodable {
    public var algorithm = "Ed25519"
    /// 64 lowercase hex digits.
    public var publicKey: String
    public var writerID: String

    enum CodingKeys: String, CodingKey {
        case algorithm, publicKey = "public_key", writerID = "writer_id"
    }

    public init(publicKey: String, writerID: String) {
        self.publicKey = publicKey
        self.writerID = writerID
    }
}

/// The auditors' handlers: search sessions and read one, through an ``AuditLog``; and the
/// evidence key, which anyone may fetch.
struct AuditRoutes: Sendable {
    let authorizer: Authorizer
    let audit: (any AuditLog)?
    let evidence: EvidenceKey?

    func respond(_ endpoint: Endpoint, to request: Request, context: BasicRequestContext) async throws -> Response {
        if endpoint == .evidenceKey {
            guard let evidence else { throw AdminError.notConfigured("no signing key") }
            return JSONBody.response(evidence)
        }
        if let roles = endpoint.roles { _ = try await authorizer.authorize(request, allowed: roles) }
        guard let audit else { throw AdminError.notConfigured("no event store") }
        switch endpoint {
        case .listSessions:
            let filter = try Self.filter(Self.formParameters(request.uri.query ?? ""))
            let sessions = try Self.reading { try audit.sessions(filter) }
            return JSONBody.response(canonical: ["sessions": .array(sessions.map(\.canonical))])
        case .getSession:
            let id = try context.parameters.require("id")
            guard let (session, events) = try Self.reading({ try audit.session(id: id) }) else { throw AdminError.sessionNotFound(id) }
            return JSONBody.response(canonical: ["session": session.canonical, "events": .array(events.map(\.canonical))])
        default:
            throw AdminError.internalError
        }
    }

    /// Query parameters decoded as HTML forms and `URLSearchParams` encode them: `+` is a space.
    static func formParameters(_ query: String) -> [String: String] {
        var parameters: [String: String] = [:]
        for pair in query.split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            func decode(_ text: Substring) -> String {
                let spaced = text.replacingOccurrences(of: "+", with: " ")
                return spaced.removingPercentEncoding ?? spaced
            }
            parameters[decode(parts[0])] = parts.count > 1 ? decode(parts[1]) : ""
        }
        return parameters
    }

    /// The same filters as `custos sessions list`.
    static func filter(_ query: [String: String]) throws(AdminError) -> SessionFilter {
        var filter = SessionFilter()
        filter.identity = query["identity"]
        filter.connection = query["connection"]
        func time(_ name: String) throws(AdminError) -> Date? {
            guard let text = query[name] else { return nil }
            guard let date = Timestamp.parse(String(text)) else {
                throw .badRequest("invalid_time", "\(name) must be RFC 3339, such as 2026-11-30T10:00:00Z")
            }
            return date
        }
        filter.since = try time("since")
        filter.until = try time("until")
        if let decision = query["decision"] {
            guard let verdict = Decision.Verdict(rawValue: String(decision)) else {
                throw .badRequest("invalid_decision", "decision must be one of allow, deny, review")
            }
            filter.decision = verdict
        }
        filter.text = query["text"]
        filter.table = query["table"]
        if let limit = query["limit"] {
            guard let value = Int(limit), (1...10_000).contains(value) else { throw .badRequest("invalid_limit", "limit must be 1 to 10000") }
            filter.limit = value
        }
        return filter
    }

    /// Store errors become a 500 whose message says nothing of the store's internals.
    private static func reading<T>(_ body: () throws -> T) throws(AdminError) -> T {
        do {
            return try body()
        } catch {
            throw AdminError.internalError
        }
    }
}
