import CustosCore

/// The tables that turn parse-tree node types and names into policy vocabulary. Kept apart from the
/// walker so that reviewing "what is privileged" is reading a list, not code.
enum Classification {
    /// Every PostgreSQL 15 statement node the analyzer understands, with its kind: the node name in
    /// snake case without `Stmt`, except where a clearer name is the one a policy author would
    /// write (`CreateStmt` is `create_table`, `IndexStmt` is `create_index`, …). Nodes whose kind
    /// depends on a field (transaction control, SET/RESET, GRANT/REVOKE, VACUUM/ANALYZE,
    /// SELECT … INTO, procedures) are resolved by ``StatementWalker``. A statement node missing here
    /// is unknown to us and therefore `opaque`.
    static let kinds: [String: String] = [
        "SelectStmt": "select", "InsertStmt": "insert", "UpdateStmt": "update", "DeleteStmt": "delete",
        "MergeStmt": "merge", "CopyStmt": "copy", "ExplainStmt": "explain",
        "PrepareStmt": "prepare", "ExecuteStmt": "execute", "DeallocateStmt": "deallocate",
        "DeclareCursorStmt": "declare_cursor", "FetchStmt": "fetch", "ClosePortalStmt": "close_portal",
        "TransactionStmt": "transaction", "VariableSetStmt": "set", "VariableShowStmt": "show",
        "DiscardStmt": "discard", "ListenStmt": "listen", "UnlistenStmt": "unlisten", "NotifyStmt": "notify",
        "LockStmt": "lock", "ConstraintsSetStmt": "constraints_set", "DoStmt": "do", "CallStmt": "call",
        "LoadStmt": "load", "CheckPointStmt": "checkpoint", "VacuumStmt": "vacuum", "ClusterStmt": "cluster",
        "ReindexStmt": "reindex", "RefreshMatViewStmt": "refresh_materialized_view",
        // DDL on relations
        "CreateStmt": "create_table", "CreateTableAsStmt": "create_table_as", "CreateForeignTableStmt": "create_foreign_table",
        "ViewStmt": "create_view", "IndexStmt": "create_index", "CreateSeqStmt": "create_sequence",
        "AlterSeqStmt": "alter_sequence", "AlterTableStmt": "alter_table", "AlterTableMoveAllStmt": "alter_table_move_all",
        "RenameStmt": "rename", "TruncateStmt": "truncate", "DropStmt": "drop", "RuleStmt": "create_rule",
        "CreateTrigStmt": "create_trigger", "CreatePolicyStmt": "create_policy", "AlterPolicyStmt": "alter_policy",
        "CreateStatsStmt": "create_stats", "AlterStatsStmt": "alter_stats", "CommentStmt": "comment",
        "SecLabelStmt": "security_label", "AlterObjectSchemaStmt": "alter_object_schema",
        "AlterObjectDependsStmt": "alter_object_depends", "AlterOwnerStmt": "alter_owner",
        "ImportForeignSchemaStmt": "import_foreign_schema",
        // Other schema objects
        "CreateSchemaStmt": "create_schema", "CreateFunctionStmt": "create_function", "AlterFunctionStmt": "alter_function",
        "CreateDomainStmt": "create_domain", "AlterDomainStmt": "alter_domain", "DefineStmt": "define",
        "CompositeTypeStmt": "create_type", "CreateEnumStmt": "create_enum", "AlterEnumStmt": "alter_enum",
        "CreateRangeStmt": "create_range", "AlterTypeStmt": "alter_type", "CreateCastStmt": "create_cast",
        "CreateConversionStmt": "create_conversion", "CreateTransformStmt": "create_transform",
        "CreateOpClassStmt": "create_op_class", "CreateOpFamilyStmt": "create_op_family",
        "AlterOpFamilyStmt": "alter_op_family", "AlterOperatorStmt": "alter_operator",
        "AlterTSDictionaryStmt": "alter_ts_dictionary", "AlterTSConfigurationStmt": "alter_ts_configuration",
        "AlterCollationStmt": "alter_collation", "CreateAmStmt": "create_am",
        "CreatePublicationStmt": "create_publication", "AlterPublicationStmt": "alter_publication",
        "CreateSubscriptionStmt": "create_subscription", "AlterSubscriptionStmt": "alter_subscription",
        "DropSubscriptionStmt": "drop_subscription", "CreateEventTrigStmt": "create_event_trigger",
        "AlterEventTrigStmt": "alter_event_trigger", "CreatePLangStmt": "create_language",
        "CreateExtensionStmt": "create_extension", "AlterExtensionStmt": "alter_extension",
        "AlterExtensionContentsStmt": "alter_extension_contents",
        "CreateFdwStmt": "create_fdw", "AlterFdwStmt": "alter_fdw", "CreateForeignServerStmt": "create_foreign_server",
        "AlterForeignServerStmt": "alter_foreign_server", "CreateUserMappingStmt": "create_user_mapping",
        "AlterUserMappingStmt": "alter_user_mapping", "DropUserMappingStmt": "drop_user_mapping",
        // Databases, tablespaces, roles, privileges, server configuration
        "CreatedbStmt": "create_database", "AlterDatabaseStmt": "alter_database", "AlterDatabaseSetStmt": "alter_database_set",
        "AlterDatabaseRefreshCollStmt": "alter_database_refresh_coll", "DropdbStmt": "drop_database",
        "CreateTableSpaceStmt": "create_tablespace", "AlterTableSpaceOptionsStmt": "alter_tablespace",
        "DropTableSpaceStmt": "drop_tablespace", "CreateRoleStmt": "create_role", "AlterRoleStmt": "alter_role",
        "AlterRoleSetStmt": "alter_role_set", "DropRoleStmt": "drop_role", "GrantStmt": "grant",
        "GrantRoleStmt": "grant_role", "AlterDefaultPrivilegesStmt": "alter_default_privileges",
        "DropOwnedStmt": "drop_owned", "ReassignOwnedStmt": "reassign_owned", "AlterSystemStmt": "alter_system",
    ]

    /// TransactionStmt's `kind` field → the transaction-control kinds of ``StatementInfo``.
    static let transactionKinds: [String: String] = [
        "TRANS_STMT_BEGIN": "begin", "TRANS_STMT_START": "begin", "TRANS_STMT_COMMIT": "commit",
        "TRANS_STMT_ROLLBACK": "rollback", "TRANS_STMT_SAVEPOINT": "savepoint", "TRANS_STMT_RELEASE": "release",
        "TRANS_STMT_ROLLBACK_TO": "rollback_to", "TRANS_STMT_PREPARE": "prepare_transaction",
        "TRANS_STMT_COMMIT_PREPARED": "commit_prepared", "TRANS_STMT_ROLLBACK_PREPARED": "rollback_prepared",
    ]

    /// Nodes that are `privileged` wherever they appear: they change who may do what, load code into
    /// the server, reach outside the database, or need superuser-like rights.
    static let privilegedNodes: Set<String> = [
        "GrantStmt", "GrantRoleStmt", "AlterDefaultPrivilegesStmt", "CreateRoleStmt", "AlterRoleStmt",
        "AlterRoleSetStmt", "DropRoleStmt", "DropOwnedStmt", "ReassignOwnedStmt", "AlterOwnerStmt",
        "AlterSystemStmt", "CreateExtensionStmt", "AlterExtensionStmt", "AlterExtensionContentsStmt", "LoadStmt",
        "CreatePLangStmt", "CreateEventTrigStmt", "AlterEventTrigStmt", "SecLabelStmt", "CheckPointStmt",
        "CreateUserMappingStmt", "AlterUserMappingStmt", "DropUserMappingStmt", "CreateFdwStmt", "AlterFdwStmt",
        "CreateForeignServerStmt", "AlterForeignServerStmt", "CreateSubscriptionStmt", "AlterSubscriptionStmt",
        "DropSubscriptionStmt", "CreateTableSpaceStmt", "AlterTableSpaceOptionsStmt", "DropTableSpaceStmt",
        "AlterTableMoveAllStmt", "CreateAmStmt",
    ]

    /// Nodes whose effect the parser cannot see: code bodies and references to code defined elsewhere.
    static let opaqueNodes: Set<String> = ["DoStmt", "CallStmt", "ExecuteStmt", "CreateFunctionStmt"]

    /// Nodes that drop or empty something wherever they appear (DELETE/UPDATE without WHERE and
    /// ALTER … DROP are decided by the walker, from fields).
    static let destructiveNodes: Set<String> = [
        "DropStmt", "TruncateStmt", "DropRoleStmt", "DropOwnedStmt", "DropdbStmt", "DropTableSpaceStmt",
        "DropSubscriptionStmt", "DropUserMappingStmt",
    ]

    /// For each node type, the fields whose RangeVars are written (every other RangeVar is read).
    /// CopyStmt's `relation` is written only for COPY FROM, which the walker decides.
    static let writeFields: [String: [StaticString]] = [
        "InsertStmt": ["relation"], "UpdateStmt": ["relation"], "DeleteStmt": ["relation"], "MergeStmt": ["relation"],
        "TruncateStmt": ["relations"], "CreateStmt": ["relation"], "IntoClause": ["rel"], "AlterTableStmt": ["relation"],
        "IndexStmt": ["relation"], "ViewStmt": ["view"], "RenameStmt": ["relation"], "RuleStmt": ["relation"],
        "CreateTrigStmt": ["relation"], "RefreshMatViewStmt": ["relation"], "AlterObjectSchemaStmt": ["relation"],
        "AlterOwnerStmt": ["relation"], "AlterObjectDependsStmt": ["relation"], "CreatePolicyStmt": ["table"],
        "AlterPolicyStmt": ["table"], "CreateSeqStmt": ["sequence"], "AlterSeqStmt": ["sequence"],
        "PartitionCmd": ["name"], "GrantStmt": ["objects"],
    ]

    /// DropStmt object types whose names are relations (reported as tables written).
    static let droppedRelationTypes: Set<String> = [
        "OBJECT_TABLE", "OBJECT_VIEW", "OBJECT_MATVIEW", "OBJECT_FOREIGN_TABLE", "OBJECT_SEQUENCE", "OBJECT_INDEX",
    ]

    /// ALTER TABLE subcommands that change who may see or own the table, or switch off the
    /// system triggers that enforce foreign keys (superuser only).
    static let privilegedAlterTableCommands: Set<String> = [
        "AT_ChangeOwner", "AT_DisableRowSecurity", "AT_NoForceRowSecurity", "AT_DisableTrigAll",
    ]

    /// Settings whose change switches identity or bypasses triggers and constraints: `SET` of them
    /// and `set_config` on them are privileged.
    static let privilegedSettings = GuardedSettings.privileged
    static let lexingSettings = GuardedSettings.lexing

    /// Administrative, file-reading/-writing and outbound-connection functions (unqualified name,
    /// lowercased; matched whatever the schema, to fail closed).
    static let privilegedFunctions: Set<String> = [
        "pg_terminate_backend", "pg_cancel_backend", "pg_reload_conf", "pg_rotate_logfile", "pg_logfile_rotate",
        "pg_read_file", "pg_read_binary_file", "pg_stat_file", "pg_logdir_ls", "lo_import", "lo_export",
        "pg_promote", "pg_switch_wal", "pg_create_restore_point", "pg_backup_start", "pg_backup_stop",
        "pg_start_backup", "pg_stop_backup", "pg_wal_replay_pause", "pg_wal_replay_resume",
        "pg_create_physical_replication_slot", "pg_create_logical_replication_slot", "pg_drop_replication_slot",
        "pg_copy_physical_replication_slot", "pg_copy_logical_replication_slot", "pg_replication_slot_advance",
        "pg_logical_emit_message", "pg_log_backend_memory_contexts", "pg_import_system_collations",
    ]

    /// Name prefixes of privileged function families (dblink_exec, pg_ls_waldir, pg_file_write, …).
    static let privilegedFunctionPrefixes: [String] = [
        "dblink", "pg_ls_", "pg_file_", "pg_stat_reset", "pg_replication_origin_", "pg_logical_slot_",
    ]

    /// Functions that run SQL given to them as text, which the parser cannot see into.
    static let opaqueFunctionPrefixes: [String] = [
        "query_to_xml", "cursor_to_xml", "table_to_xml", "schema_to_xml", "database_to_xml", "ts_stat", "ts_rewrite",
    ]

    static func isPrivilegedFunction(_ name: String) -> Bool {
        privilegedFunctions.contains(name) || privilegedFunctionPrefixes.contains { name.hasPrefix($0) }
    }

    static func isOpaqueFunction(_ name: String) -> Bool {
        opaqueFunctionPrefixes.contains { name.hasPrefix($0) }
    }

    /// Node types with nothing inside that matters to the analysis: the walker does not descend.
    static let leafNodes: Set<String> = [
        "A_Const", "String", "Integer", "Float", "Boolean", "BitString", "ColumnRef", "ParamRef", "A_Star",
        "SQLValueFunction", "TypeName", "RoleSpec", "AccessPriv", "SetToDefault",
    ]

    /// Node types the walker must not descend into: their RangeVars are not tables being used
    /// (a composite type's own name; FOR UPDATE OF names, which are aliases already in FROM).
    static let ignoredNodes: Set<String> = ["CompositeTypeStmt", "LockingClause"]

    /// What the walker does at one node type, derived once from the lists above so that the walk
    /// costs one dictionary lookup per node.
    struct NodeRule: Sendable {
        enum Handler: Sendable {
            case generic, leaf, ignore, rangeVar, funcCall, deleteOrUpdate, copy, drop, alterTableCmd, alterDomain
            case variableSet, explain
        }
        var handler = Handler.generic
        var privileged = false
        var opaque = false
        var destructive = false
        var writeFields: [StaticString] = []
    }

    /// Node rules by index, the index of each type name, and the indices of the types that
    /// appear inline (unwrapped) in fields.
    struct RuleTable: Sendable {
        var rules: [NodeRule] = []
        var index: [String: Int16] = [:]

        mutating func slot(_ name: String) -> Int {
            if let existing = index[name] { return Int(existing) }
            rules.append(NodeRule())
            index[name] = Int16(rules.count - 1)
            return rules.count - 1
        }

        func rule(_ name: String) -> Int16 { index[name] ?? -1 }
    }

    static let ruleTable: RuleTable = {
        var table = RuleTable()
        for name in privilegedNodes { table.rules[table.slot(name)].privileged = true }
        for name in opaqueNodes { table.rules[table.slot(name)].opaque = true }
        for name in destructiveNodes { table.rules[table.slot(name)].destructive = true }
        for (name, fields) in writeFields { table.rules[table.slot(name)].writeFields = fields }
        for name in leafNodes { table.rules[table.slot(name)].handler = .leaf }
        for name in ignoredNodes { table.rules[table.slot(name)].handler = .ignore }
        let handlers: [String: NodeRule.Handler] = [
            "RangeVar": .rangeVar, "FuncCall": .funcCall, "DeleteStmt": .deleteOrUpdate, "UpdateStmt": .deleteOrUpdate,
            "CopyStmt": .copy, "DropStmt": .drop, "AlterTableCmd": .alterTableCmd, "AlterDomainStmt": .alterDomain,
            "VariableSetStmt": .variableSet, "ExplainStmt": .explain,
        ]
        for (name, handler) in handlers { table.rules[table.slot(name)].handler = handler }
        // Types that appear inline in fields (see StatementWalker.inlineRule) need a slot.
        for name in ["SelectStmt", "IntoClause", "CreateStmt", "GrantStmt", "PartitionCmd"] { _ = table.slot(name) }
        return table
    }()

    static let rangeVarRule = ruleTable.rule("RangeVar")
    static let selectStmtRule = ruleTable.rule("SelectStmt")
    static let intoClauseRule = ruleTable.rule("IntoClause")
    static let funcCallRule = ruleTable.rule("FuncCall")
    static let variableSetRule = ruleTable.rule("VariableSetStmt")
    static let createStmtRule = ruleTable.rule("CreateStmt")
    static let grantStmtRule = ruleTable.rule("GrantStmt")
    static let partitionCmdRule = ruleTable.rule("PartitionCmd")

    /// Kinds that only read (before looking at tables and flags). `explain` and `prepare` take their
    /// inner statement's answer, which the walker resolves.
    static let readKinds: Set<String> = ["select", "show", "declare_cursor", "fetch"]

    /// Snake case of a node name without `Stmt`, for node types not in ``kinds`` (future parser
    /// versions): `AlterFooBarStmt` → `alter_foo_bar`.
    static func snakeCase(_ typeName: String) -> String {
        let name = typeName.hasSuffix("Stmt") ? Array(typeName.dropLast(4)) : Array(typeName)
        var output = ""
        for (index, character) in name.enumerated() {
            if character.isUppercase, index > 0 {
                let previous = name[index - 1]
                let nextIsLower = index + 1 < name.count && name[index + 1].isLowercase
                if previous.isLowercase || (previous.isUppercase && nextIsLower) { output.append("_") }
            }
            output.append(contentsOf: character.lowercased())
        }
        return output
    }
}
