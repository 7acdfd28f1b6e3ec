import ArgumentParser
import AsyncHTTPClient
import CustosCore
import Foundation

/// `custos approvals list|show|approve|deny`: the admin HTTP API from the command line (no config
/// file: the gateway's admin URL and an OIDC token are enough).
struct ApprovalsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "approvals", abstract: "List, show and decide approvals through the gateway's admin API.",
        subcommands: [List.self, Show.self, Approve.self, Deny.self])

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List approvals, newest first.")

        @OptionGroup var api: AdminAPIOptions
        @Option(help: "Only this status: \(Approval.Status.allCases.map(\.rawValue).joined(separator: ", ")).") var status: String?

        func run() async throws {
            if let status, Approval.Status(rawValue: status) == nil {
                throw fail("--status: expected one of \(Approval.Status.allCases.map(\.rawValue).joined(separator: ", ")), got \"\(status)\"", code: 2)
            }
            let client = try api.client()
            let body = try await client.call(.GET, "/api/v1/approvals", query: status.map { "status=\($0)" })
            if api.json { return try printJSON(AdminClient.object(body)) }
            let list = try AdminClient.decode(ApprovalList.self, body)
            if list.approvals.isEmpty { return print(status.map { "no \($0) approvals" } ?? "no approvals") }
            print(pad("APPROVAL", 8), pad("STATUS", 8), pad("REQUESTER", 24), pad("CONNECTION", 12), pad("RULE", 16), pad("CREATED", 20), "STATEMENT")
            for approval in list.approvals {
                print(
                    pad(String(approval.id.prefix(8)), 8), pad(approval.status.rawValue, 8), pad(clip(approval.requester.email ?? approval.requester.subject, 24), 24),
                    pad(clip(approval.connection, 12), 12), pad(clip(approval.rule, 16), 16), pad(String(approval.createdAt.prefix(19)), 20),
                    clip(approval.text, 50))
            }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show one approval.")

        @OptionGroup var api: AdminAPIOptions
        @Argument(help: "Approval id (or a unique prefix).") var id: String

        func run() async throws {
            let client = try api.client()
            let body = try await client.approval(.GET, id)
            if api.json { return try printJSON(AdminClient.object(body)) }
            describe(try AdminClient.decode(Approval.self, body))
        }
    }

    struct Approve: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Approve a pending approval.")

        @OptionGroup var api: AdminAPIOptions
        @Argument(help: "Approval id (or a unique prefix).") var id: String
        @Option(help: "Why (recorded with the decision).") var comment: String?

        func run() async throws {
            try await decide(api: api, id: id, verdict: "approve", comment: comment)
        }
    }

    struct Deny: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Deny a pending approval.")

        @OptionGroup var api: AdminAPIOptions
        @Argument(help: "Approval id (or a unique prefix).") var id: String
        @Option(help: "Why (required; recorded with the decision and shown to the requester).") var comment: String

        func validate() throws {
            if comment.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty { throw ValidationError("--comment must not be empty") }
        }

        func run() async throws {
            try await decide(api: api, id: id, verdict: "deny", comment: comment)
        }
    }

    static func decide(api: AdminAPIOptions, id: String, verdict: String, comment: String?) async throws {
        let client = try api.client()
        let payload = try JSONSerialization.data(withJSONObject: comment.map { ["comment": $0] } ?? [String: String]())
        let body = try await client.approval(.POST, id, suffix: "/\(verdict)", body: payload)
        if api.json { return try printJSON(AdminClient.object(body)) }
        describe(try AdminClient.decode(Approval.self, body))
    }

    struct ApprovalList: Decodable {
        var approvals: [Approval]
    }

    static func describe(_ approval: Approval) {
        let requester = approval.requester
        let progress = approval.status == .pending ? " (\(approval.approvals) of \(approval.required) approvals)" : ""
        print("approval    \(approval.id)")
        print("status      \(approval.status.rawValue)\(progress)")
        print("requester   \(requester.subject)\(requester.email.map { " <\($0)>" } ?? "") via \(requester.issuer) (groups: \(requester.groups.joined(separator: ", ")))")
        print("connection  \(approval.connection) (session \(approval.sessionID))")
        print("rule        \(approval.rule); approvers: \(approval.approverGroups.joined(separator: ", ")); \(approval.required) needed")
        print("time        created \(approval.createdAt), expires \(approval.expiresAt)\(approval.usedAt.map { ", used \($0)" } ?? "")")
        print("fingerprint \(approval.fingerprint)")
        print("statement\(approval.textMasked ? " (as recorded: values masked; the analysis below is of the statement as sent)" : "")")
        print("    \(safe(approval.text).replacingOccurrences(of: "\n", with: "\n    "))")
        if !approval.parameters.isEmpty {
            print("    parameters: \(approval.parameters.map { $0.map { "'\(safe($0))'" } ?? "NULL" }.joined(separator: ", "))")
        }
        for part in approval.analysis {
            var line = "    does: \(part.kind)"
            if !part.tablesWritten.isEmpty { line += "; writes \(part.tablesWritten.joined(separator: ", "))" }
            if !part.tablesRead.isEmpty { line += "; reads \(part.tablesRead.joined(separator: ", "))" }
            if !part.flags.isEmpty { line += "; flags \(part.flags.joined(separator: ", "))" }
            print(safe(line))
        }
        if approval.decisions.isEmpty { return print("decisions   (none)") }
        print("decisions")
        for decision in approval.decisions {
            let who = decision.approver + (decision.approverEmail.map { " <\($0)>" } ?? "")
            print(safe("    \(decision.at) \(decision.verdict.rawValue) by \(who)\(decision.comment.map { ": \($0)" } ?? "")"))
        }
    }

    /// Text from the API with control characters (terminal escapes, carriage returns) shown as
    /// `?`: a statement cannot rewrite what an approver sees on screen.
    static func safe(_ text: String) -> String {
        String(
            String.UnicodeScalarView(
                text.unicodeScalars.map { scalar in
                    scalar == "\n" || scalar == "\t" || !(scalar.properties.generalCategory == .control || scalar.properties.generalCategory == .format)
                        ? scalar : "?"
                }))
    }

    /// One line, at most `width` characters.
    static func clip(_ text: String, _ width: Int) -> String {
        let line = safe(text).split(whereSeparator: \.isNewline).joined(separator: " ")
        return line.count <= width ? line : String(line.prefix(width - 1)) + "…"
    }
}

/// `--gateway`, `--token`, `--json`: where the admin API is and who calls it.
struct AdminAPIOptions: ParsableArguments {
    @Option(help: "The gateway's admin API (default: $CUSTOS_GATEWAY), e.g. http://127.0.0.1:6480.") var gateway: String?
    @Option(help: "An OIDC token (default: $CUSTOS_TOKEN; prefer the variable: options show in the process list).") var token: String?
    @Flag(help: "Print the API's JSON.") var json = false

    func client() throws -> AdminClient {
        let environment = ProcessInfo.processInfo.environment
        guard let gateway = (gateway ?? environment["CUSTOS_GATEWAY"]).map({ $0.trimmingCharacters(in: .whitespaces) }), !gateway.isEmpty else {
            throw fail("no admin API: give --gateway or set CUSTOS_GATEWAY (e.g. http://127.0.0.1:6480)", code: 2)
        }
        guard let url = URL(string: gateway), let scheme = url.scheme?.lowercased(), scheme == "http" || scheme == "https", url.host != nil else {
            throw fail("--gateway: expected an http(s) URL such as http://127.0.0.1:6480, got \"\(gateway)\"", code: 2)
        }
        guard let token = (token ?? environment["CUSTOS_TOKEN"]).map({ $0.trimmingCharacters(in: .whitespacesAndNewlines) }), !token.isEmpty else {
            throw fail("no token: give --token or set CUSTOS_TOKEN to an OIDC token", code: 2)
        }
        return AdminClient(base: gateway.hasSuffix("/") ? String(gateway.dropLast()) : gateway, token: token)
    }
}

/// Calls the admin API; API errors become `custos: <message> (HTTP <status>)` and exit 1.
struct AdminClient {
    let base: String
    let token: String

    enum Method: String {
        case GET, POST
    }

    /// An API refusal.
    struct APIError: Error {
        var status: Int
        var code: String?
        var message: String
    }

    /// The response body of a 2xx answer; exits 1 on an API error or an unreachable gateway.
    func call(_ method: Method, _ path: String, query: String? = nil, body: Data? = nil) async throws -> Data {
        do {
            return try await request(method, path, query: query, body: body)
        } catch let error as APIError {
            throw fail("\(error.message) (HTTP \(error.status))", code: 1)
        }
    }

    /// Calls `/api/v1/approvals/{id}{suffix}`. When the API knows no such id, looks for the one
    /// approval whose id starts with it (`list` shows ids shortened) and calls with that.
    func approval(_ method: Method, _ id: String, suffix: String = "", body: Data? = nil) async throws -> Data {
        do {
            return try await request(method, "/api/v1/approvals/\(Self.segment(id))\(suffix)", query: nil, body: body)
        } catch let error as APIError where error.code == "approval_not_found" {
            let list = try AdminClient.decode(ApprovalsCommand.ApprovalList.self, try await call(.GET, "/api/v1/approvals"))
            let matches = list.approvals.map(\.id).filter { $0.hasPrefix(id) }
            if matches.count > 1 { throw fail("\"\(id)\" matches \(matches.count) approvals: give more of the id", code: 1) }
            guard let full = matches.first, full != id else { throw fail("\(error.message) (HTTP \(error.status))", code: 1) }
            return try await call(method, "/api/v1/approvals/\(Self.segment(full))\(suffix)", body: body)
        } catch let error as APIError {
            throw fail("\(error.message) (HTTP \(error.status))", code: 1)
        }
    }

    private func request(_ method: Method, _ path: String, query: String?, body: Data?) async throws -> Data {
        var request = HTTPClientRequest(url: base + path + (query.map { "?\($0)" } ?? ""))
        request.method = method == .GET ? .GET : .POST
        request.headers.add(name: "Authorization", value: "Bearer \(token)")
        request.headers.add(name: "Accept", value: "application/json")
        if let body {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(Array(body))
        }
        let status: Int
        let data: Data
        do {
            let response = try await HTTPClient.shared.execute(request, timeout: .seconds(30))
            status = Int(response.status.code)
            data = Data(try await response.body.collect(upTo: 32 << 20).readableBytesView)
        } catch {
            throw fail("cannot reach the admin API at \(base): \(error)", code: 1)
        }
        guard (200..<300).contains(status) else {
            let object = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any]
            let detail = object?["error"] as? [String: Any]
            let message = detail?["message"] as? String ?? (data.isEmpty ? "request failed" : String(decoding: data.prefix(200), as: UTF8.self))
            throw APIError(status: status, code: detail?["code"] as? String, message: message)
        }
        return data
    }

    static func segment(_ id: String) -> String {
        var allowed = CharacterSet.urlPathAllowed
        allowed.remove("/")
        return id.addingPercentEncoding(withAllowedCharacters: allowed) ?? id
    }

    static func object(_ data: Data) throws -> Any {
        do {
            return try JSONSerialization.jsonObject(with: data)
        } catch {
            throw fail("the admin API answered with something other than JSON", code: 1)
        }
    }

    static func decode<T: Decodable>(_ type: T.Type, _ data: Data) throws -> T {
        do {
            return try JSONDecoder().decode(type, from: data)
        } catch {
            throw fail("unexpected answer from the admin API: \(error)", code: 1)
        }
    }
}
