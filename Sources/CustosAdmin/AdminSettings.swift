import CustosCore

/// What a caller of the admin API may do, granted through the groups in their OIDC token.
public enum AdminRole: String, Sendable, CaseIterable, Codable {
    /// Decides approvals (and reads them).
    case approver
    /// Reads approvals; decides nothing.
    case auditor
    /// Everything.
    case admin
}

/// Where the admin API listens and which groups hold which role.
public struct AdminSettings: Sendable, Equatable {
    public var host: String
    /// `0` binds an ephemeral port (tests).
    public var port: Int
    /// Role → groups whose members hold it. A role no group holds is held by nobody.
    public var roles: [AdminRole: [String]]

    public init(host: String = "127.0.0.1", port: Int = 6480, roles: [AdminRole: [String]] = [:]) {
        self.host = host
        self.port = port
        self.roles = roles
    }

    /// The roles an identity holds: every role one of whose groups it is in.
    public func roles(of identity: Identity) -> Set<AdminRole> {
        Set(AdminRole.allCases.filter { role in roles[role, default: []].contains(where: identity.groups.contains) })
    }
}
