/*
 * atrest_guard: keeps a database's CREATEROLE master user inside the
 * database.
 *
 * atrest gives each customer database a "master" role with LOGIN, CREATEDB
 * and CREATEROLE but not SUPERUSER. Up to PostgreSQL 15, CREATEROLE lets a
 * role grant itself any non-superuser role, the predefined
 * pg_execute_server_program, pg_read_server_files and pg_write_server_files
 * included, and with them COPY ... PROGRAM runs commands on the host as the
 * OS user PostgreSQL runs as. It also lets the role drop, rename or alter
 * atrest's own non-superuser roles (atrest_replication).
 *
 * This module, loaded with shared_preload_libraries, puts a
 * ProcessUtility_hook in front of every utility statement. When the
 * current user is not a superuser it refuses:
 *
 *   - any statement that would make a role a member of one of those three
 *     roles, or of a role that has their privileges (GRANT, CREATE ROLE ...
 *     IN ROLE, ALTER GROUP ... ADD USER);
 *   - creating, altering, renaming (from or to), dropping, commenting on
 *     or labelling, and granting or revoking membership in or to, a role
 *     whose name begins with "atrest_": those are atrest's own;
 *   - ALTER SYSTEM (PostgreSQL refuses it to non-superusers too).
 *
 * After a non-superuser's GRANT, CREATE ROLE or ALTER ROLE has run, it also
 * checks the catalog itself: no non-superuser role may be a direct member
 * of the three roles. A path missed above is then still refused, and the
 * transaction rolls back.
 *
 * Superusers (atrest's own sessions) are never restricted.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_auth_members.h"
#include "catalog/pg_authid.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "tcop/utility.h"
#include "utils/acl.h"
#include "utils/catcache.h"
#include "utils/syscache.h"

#if PG_VERSION_NUM < 140000
#error "atrest_guard needs PostgreSQL 14 or later (the ProcessUtility_hook with readOnlyTree)"
#endif

PG_MODULE_MAGIC;

#if PG_VERSION_NUM < 160000
/* fmgr.h declares it from PostgreSQL 16 on. */
extern PGDLLEXPORT void _PG_init(void);
#endif

/* The prefix of atrest's own roles (role names are case-sensitive). */
#define ATREST_PREFIX "atrest_"

/* The predefined roles that reach the server's files and programs. */
static const Oid server_roles[] = {
	ROLE_PG_EXECUTE_SERVER_PROGRAM,
	ROLE_PG_READ_SERVER_FILES,
	ROLE_PG_WRITE_SERVER_FILES,
};

static ProcessUtility_hook_type prev_ProcessUtility = NULL;

/* The current user's name, for messages. */
static const char *
current_name(void)
{
	return GetUserNameFromId(GetUserId(), false);
}

/* The name a RoleSpec stands for; NULL for PUBLIC. */
static const char *
rolespec_name(const RoleSpec *spec)
{
	if (spec == NULL)
		return NULL;
	switch (spec->roletype)
	{
		case ROLESPEC_CSTRING:
			return spec->rolename;
		case ROLESPEC_CURRENT_ROLE:
		case ROLESPEC_CURRENT_USER:
			return GetUserNameFromId(GetUserId(), false);
		case ROLESPEC_SESSION_USER:
			return GetUserNameFromId(GetSessionUserId(), false);
		case ROLESPEC_PUBLIC:
			return NULL;
	}
	return NULL;
}

/*
 * Refuses `action` on `name` (e.g. "drop role") when the name is one of
 * atrest's own.
 */
static void
check_not_atrest(const char *action, const char *name)
{
	if (name != NULL && strncmp(name, ATREST_PREFIX, strlen(ATREST_PREFIX)) == 0)
		ereport(ERROR,
				errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				errmsg("role \"%s\" may not %s \"%s\": roles whose names begin with \"%s\" belong to atrest",
					   current_name(), action, name, ATREST_PREFIX));
}

/* check_not_atrest for every RoleSpec of a list. */
static void
check_list_not_atrest(const char *action, List *specs)
{
	ListCell   *lc;

	foreach(lc, specs)
		check_not_atrest(action, rolespec_name(lfirst_node(RoleSpec, lc)));
}

/*
 * Refuses to make any role a member of `name` when `name` is one of the
 * server-file roles or has their privileges (is a member of one, directly
 * or not). A role that does not exist is left to PostgreSQL to refuse.
 */
static void
check_grantable(const char *name)
{
	Oid			role;

	if (name == NULL)
		return;
	role = get_role_oid(name, true);
	if (!OidIsValid(role))
		return;
	for (size_t i = 0; i < lengthof(server_roles); i++)
	{
		if (role == server_roles[i])
			ereport(ERROR,
					errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					errmsg("role \"%s\" may not grant \"%s\": it reaches the server's files and programs",
						   current_name(), name));
		if (is_member_of_role_nosuper(role, server_roles[i]))
			ereport(ERROR,
					errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					errmsg("role \"%s\" may not grant \"%s\": it has the privileges of \"%s\", which reach the server's files and programs",
						   current_name(), name,
						   GetUserNameFromId(server_roles[i], false)));
	}
}

/* The RoleSpec list of option `name` in a CREATE/ALTER ROLE option list. */
static List *
role_option(List *options, const char *name)
{
	ListCell   *lc;

	foreach(lc, options)
	{
		DefElem    *opt = lfirst_node(DefElem, lc);

		if (strcmp(opt->defname, name) == 0)
			return (List *) opt->arg;
	}
	return NIL;
}

/* Refuses the statement if a non-superuser may not run it (see above). */
static void
check_statement(Node *parsetree)
{
	ListCell   *lc;

	switch (nodeTag(parsetree))
	{
		case T_GrantRoleStmt:
			{
				GrantRoleStmt *stmt = (GrantRoleStmt *) parsetree;

				foreach(lc, stmt->granted_roles)
				{
					const char *granted = lfirst_node(AccessPriv, lc)->priv_name;

					check_not_atrest(stmt->is_grant ? "grant" : "revoke", granted);
					if (stmt->is_grant)
						check_grantable(granted);
				}
				check_list_not_atrest(stmt->is_grant ? "grant a role to" : "revoke a role from",
									  stmt->grantee_roles);
				break;
			}
		case T_CreateRoleStmt:
			{
				CreateRoleStmt *stmt = (CreateRoleStmt *) parsetree;

				check_not_atrest("create role", stmt->role);
				/* IN ROLE / IN GROUP: the new role joins these. */
				foreach(lc, role_option(stmt->options, "addroleto"))
				{
					const char *name = rolespec_name(lfirst_node(RoleSpec, lc));

					check_not_atrest("grant", name);
					check_grantable(name);
				}
				/* ROLE / USER / ADMIN: these join the new role. */
				check_list_not_atrest("grant a role to",
									  role_option(stmt->options, "rolemembers"));
				check_list_not_atrest("grant a role to",
									  role_option(stmt->options, "adminmembers"));
				break;
			}
		case T_AlterRoleStmt:
			{
				AlterRoleStmt *stmt = (AlterRoleStmt *) parsetree;
				const char *name = rolespec_name(stmt->role);

				check_not_atrest("alter role", name);
				/* ALTER GROUP name ADD/DROP USER members */
				check_list_not_atrest(stmt->action > 0 ? "grant a role to" : "revoke a role from",
									  role_option(stmt->options, "rolemembers"));
				if (stmt->action > 0 && role_option(stmt->options, "rolemembers") != NIL)
					check_grantable(name);
				break;
			}
		case T_AlterRoleSetStmt:
			/* A NULL role is ALTER ROLE ALL, which PostgreSQL keeps to superusers. */
			check_not_atrest("alter role",
							 rolespec_name(((AlterRoleSetStmt *) parsetree)->role));
			break;
		case T_DropRoleStmt:
			check_list_not_atrest("drop role", ((DropRoleStmt *) parsetree)->roles);
			break;
		case T_RenameStmt:
			{
				RenameStmt *stmt = (RenameStmt *) parsetree;

				if (stmt->renameType == OBJECT_ROLE)
				{
					check_not_atrest("rename role", stmt->subname);
					check_not_atrest("rename a role to", stmt->newname);
				}
				break;
			}
		case T_CommentStmt:
			if (((CommentStmt *) parsetree)->objtype == OBJECT_ROLE)
				check_not_atrest("comment on role",
								 strVal(((CommentStmt *) parsetree)->object));
			break;
		case T_SecLabelStmt:
			if (((SecLabelStmt *) parsetree)->objtype == OBJECT_ROLE)
				check_not_atrest("label role",
								 strVal(((SecLabelStmt *) parsetree)->object));
			break;
		case T_AlterSystemStmt:
			ereport(ERROR,
					errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					errmsg("role \"%s\" may not use ALTER SYSTEM: only a superuser may change the server's configuration",
						   current_name()));
			break;
		default:
			break;
	}
}

/*
 * Whether the guard looks at this statement at all. Other statements are
 * passed on without a catalog lookup (ROLLBACK, for one, runs in an aborted
 * transaction, where the catalog may not be read).
 */
static bool
is_guarded(Node *parsetree)
{
	switch (nodeTag(parsetree))
	{
		case T_GrantRoleStmt:
		case T_CreateRoleStmt:
		case T_AlterRoleStmt:
		case T_AlterRoleSetStmt:
		case T_DropRoleStmt:
		case T_AlterSystemStmt:
			return true;
		case T_RenameStmt:
			return ((RenameStmt *) parsetree)->renameType == OBJECT_ROLE;
		case T_CommentStmt:
			return ((CommentStmt *) parsetree)->objtype == OBJECT_ROLE;
		case T_SecLabelStmt:
			return ((SecLabelStmt *) parsetree)->objtype == OBJECT_ROLE;
		default:
			return false;
	}
}

/*
 * Belt and braces: refuses if any non-superuser role is now a direct member
 * of a server-file role, whatever statement made it so.
 */
static void
verify_no_server_members(void)
{
	for (size_t i = 0; i < lengthof(server_roles); i++)
	{
		CatCList   *members;
		Oid			offender = InvalidOid;

		members = SearchSysCacheList1(AUTHMEMROLEMEM,
									  ObjectIdGetDatum(server_roles[i]));
		for (int j = 0; j < members->n_members; j++)
		{
			Form_pg_auth_members m = (Form_pg_auth_members)
				GETSTRUCT(&members->members[j]->tuple);

			if (!superuser_arg(m->member))
			{
				offender = m->member;
				break;
			}
		}
		ReleaseSysCacheList(members);
		if (OidIsValid(offender))
			ereport(ERROR,
					errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					errmsg("role \"%s\" may not leave role \"%s\" a member of \"%s\": it reaches the server's files and programs",
						   current_name(), GetUserNameFromId(offender, false),
						   GetUserNameFromId(server_roles[i], false)));
	}
}

static void
guard_ProcessUtility(PlannedStmt *pstmt, const char *queryString,
					 bool readOnlyTree, ProcessUtilityContext context,
					 ParamListInfo params, QueryEnvironment *queryEnv,
					 DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *parsetree = pstmt->utilityStmt;
	bool		verify = false;

	if (is_guarded(parsetree) && !superuser())
	{
		check_statement(parsetree);
		verify = IsA(parsetree, GrantRoleStmt) ||
			IsA(parsetree, CreateRoleStmt) ||
			IsA(parsetree, AlterRoleStmt);
	}

	if (prev_ProcessUtility)
		prev_ProcessUtility(pstmt, queryString, readOnlyTree, context,
							params, queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context,
								params, queryEnv, dest, qc);

	if (verify)
	{
		/* Make the statement's catalog changes visible to the check. */
		CommandCounterIncrement();
		verify_no_server_members();
	}
}

void
_PG_init(void)
{
	/*
	 * A guard loaded by one session's LOAD would guard only that session:
	 * refuse, so that a missing shared_preload_libraries shows.
	 */
	if (!process_shared_preload_libraries_in_progress)
		ereport(ERROR,
				errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				errmsg("atrest_guard must be loaded with shared_preload_libraries"));

	prev_ProcessUtility = ProcessUtility_hook;
	ProcessUtility_hook = guard_ProcessUtility;
}
