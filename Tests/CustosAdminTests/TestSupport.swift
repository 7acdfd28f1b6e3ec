import Crypto
import CustosAdmin
import CustosCore
import Foundation
import Hummingbird
import HummingbirdTesting
import Logging
import Synchronization

/// A JWKS served from memory (no network).
final class StaticJWKS: JWKSSource {
    let document: Mutex<[UInt8]>

    init(_ keys: [[String: Any]]) {
        document = Mutex(Array(try! JSONSerialization.data(withJSONObject: ["keys": keys])))
    }

    func fetchJWKS(for issuer: IssuerSettings) async throws -> [UInt8] {
        document.withLock { $0 }
    }
}

/// Signs tokens with P-256 (ES256), as an issuer would.
struct TestSigner: Sendable {
    let kid: String
    let key = P256.Signing.PrivateKey()

    var jwk: [String: Any] {
        let point = key.publicKey.x963Representation
        return ["kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256", "x": Self.b64(point[1..<33]), "y": Self.b64(point[33..<65])]
    }

    func token(_ claims: [String: Any]) -> String {
        let head = Self.b64(try! JSONSerialization.data(withJSONObject: ["alg": "ES256", "kid": kid, "typ": "JWT"]))
        let body = Self.b64(try! JSONSerialization.data(withJSONObject: claims))
        let signature = try! key.signature(for: Data("\(head).\(body)".utf8)).rawRepresentation
        return "\(head).\(body).\(Self.b64(signature))"
    }

    static func b64<D: DataProtocol>(_ data: D) -> String {
        Data(data).base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }
}

/// A recorder that commits at once (or always fails, to test 503).
struct ImmediateRecorder: Recorder {
    var fails = false

    func append(_ draft: EventDraft, completion: @escaping @Sendable (Result<Void, RecorderError>) -> Void) {
        completion(fails ? .failure(RecorderError(reason: "disk full")) : .success(()))
    }

    func appendLater(_ draft: EventDraft) {}
}

/// One API over a real ApprovalBook and real tokens.
///
/// People: alice (dev, dba) asks; carol (dba) and erin (security) approve; dave (audit) audits;
/// root (platform) administers; mallory (nothing) holds no role.
struct Fixture: Sendable {
    static let issuer = "https://idp.test"
    static let settings = AdminSettings(
        host: "127.0.0.1", port: 0, roles: [.approver: ["dba", "security"], .auditor: ["audit"], .admin: ["platform"]])

    let signer = TestSigner(kid: "admin-test")
    let book: ApprovalBook
    let verifier: TokenVerifier
    /// Pending, asked by alice on `prod`, decided by dba.
    let pending: Approval
    /// Pending, asked by bob, decided by security, two approvals needed.
    let twoPerson: Approval
    /// Already approved.
    let approved: Approval

    init(recorder: ImmediateRecorder = ImmediateRecorder()) {
        let now = Date()
        func approval(_ id: String, by requester: Identity, groups: [String], required: Int = 1, age: TimeInterval) -> Approval {
            Approval(
                id: id, requester: requester, connection: "prod", sessionID: "session-\(id)", text: "DELETE FROM orders WHERE id = $1",
                parameters: ["42"], fingerprint: Approval.fingerprint(text: "DELETE FROM orders WHERE id = $1", parameters: ["42"]),
                rule: "review-deletes", approverGroups: groups, required: required, createdAt: now.addingTimeInterval(-age), ttl: 3600)
        }
        pending = approval("a-pending", by: Self.identity("alice", groups: ["dev", "dba"]), groups: ["dba"], age: 10)
        twoPerson = approval("a-two", by: Self.identity("bob", groups: ["dev"]), groups: ["security"], required: 2, age: 20)
        var approved = approval("a-approved", by: Self.identity("bob", groups: ["dev"]), groups: ["dba"], age: 30)
        approved.status = .approved
        self.approved = approved
        book = ApprovalBook(recorder: recorder, loaded: [pending, twoPerson, approved])
        verifier = TokenVerifier(
            issuers: [IssuerSettings(issuer: Self.issuer, audiences: ["custos"], algorithms: ["ES256"], groupsClaim: "groups")],
            source: StaticJWKS([signer.jwk]), skew: 30, refetchInterval: 60)
    }

    static func identity(_ name: String, groups: [String]) -> Identity {
        Identity(subject: name, email: "\(name)@example.com", groups: groups, issuer: issuer, tokenID: nil, expiresAt: .distantFuture)
    }

    static let groups: [String: [String]] = [
        "alice": ["dev", "dba"], "carol": ["dba"], "erin": ["security"], "frank": ["security"], "dave": ["audit"], "root": ["platform"],
        "mallory": [],
    ]

    func token(_ name: String, expiresIn: TimeInterval = 600) -> String {
        signer.token([
            "iss": Self.issuer, "aud": "custos", "sub": name, "email": "\(name)@example.com", "groups": Self.groups[name] ?? [],
            "exp": Date().timeIntervalSince1970 + expiresIn,
        ])
    }

    var app: some ApplicationProtocol {
        var logger = Logger(label: "custos.admin.test")
        logger.logLevel = .warning
        return AdminAPI.application(
            settings: Self.settings, verifier: verifier, approvals: book, audit: ListedSessions(), evidence: EvidenceKey(publicKey: "ab", writerID: "gw-test"),
            logger: logger)
    }

    func test<Value>(_ body: @Sendable (any TestClientProtocol) async throws -> Value) async throws -> Value {
        try await app.test(.router, body)
    }
}

extension TestClientProtocol {
    /// A request as `name` (nil: no Authorization header); `rawAuthorization` overrides the header.
    func call(
        _ method: HTTPRequest.Method, _ uri: String, as token: String? = nil, authorization: String? = nil, json: String? = nil
    ) async throws -> TestResponse {
        var headers: HTTPFields = [:]
        if let token { headers[.authorization] = "Bearer \(token)" }
        if let authorization { headers[.authorization] = authorization }
        if json != nil { headers[.contentType] = "application/json" }
        return try await execute(uri: uri, method: method, headers: headers, body: json.map { ByteBuffer(string: $0) })
    }
}

extension TestResponse {
    var object: [String: Any] {
        (try? JSONSerialization.jsonObject(with: Data(body.readableBytesView))) as? [String: Any] ?? [:]
    }

    var errorCode: String? { (object["error"] as? [String: Any])?["code"] as? String }
    var errorMessage: String? { (object["error"] as? [String: Any])?["message"] as? String }
    var text: String { String(buffer: body) }

    func approval() throws -> Approval {
        try JSONDecoder().decode(Approval.self, from: Data(body.readableBytesView))
    }
}

/// Two recorded sessions held in memory, for the routes' authorization and encoding (the SQLite
/// store behind the same protocol is tested end to end in e2e/test_search.py).
struct ListedSessions: AuditLog {
    static let sessions = ["s1", "s2"].map {
        SessionSummary(
            id: $0, connection: "prod", database: "prod", startupUser: "agent", subject: "alice", email: nil, issuer: Fixture.issuer, groups: ["dev"],
            clientAddress: "127.0.0.1:5000", applicationName: nil, startedAt: "2026-11-30T10:00:00.000000Z", outcome: "closed")
    }

    func sessions(_ filter: SessionFilter) throws -> [SessionSummary] { Self.sessions }

    func session(id: String) throws -> (SessionSummary, [Event])? {
        Self.sessions.first { $0.id == id }.map { ($0, []) }
    }
}
