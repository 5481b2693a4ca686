"""PolicyService: grants and groups."""

from __future__ import annotations

from kms.api.proto import pb
from kms.domain.policy import Grant
from kms.service.calls import Call
from kms.service.policy import PolicyService


def grant_message(grant: Grant) -> pb.Grant:
    return pb.Grant(
        grant_id=grant.grant_id,
        principal=grant.principal,
        resource=grant.resource,
        permissions=sorted(p.value for p in grant.permissions),
        encryption_context_equals=dict(grant.context),
        created_by=grant.created_by,
    )


class PolicyServicer:
    def __init__(self, policies: PolicyService) -> None:
        self._policies = policies

    def GrantPermissions(self, request: pb.GrantPermissionsRequest, call: Call) -> pb.Grant:
        return grant_message(
            self._policies.grant(
                call,
                request.principal,
                request.resource,
                list(request.permissions),
                dict(request.encryption_context_equals),
            )
        )

    def RevokeGrant(self, request: pb.RevokeGrantRequest, call: Call) -> pb.Grant:
        return grant_message(self._policies.revoke(call, request.grant_id))

    def ListGrants(self, request: pb.ListGrantsRequest, call: Call) -> pb.ListGrantsResponse:
        grants = self._policies.grants(call, request.principal, request.resource)
        return pb.ListGrantsResponse(grants=[grant_message(g) for g in grants])

    def AddGroupMember(self, request: pb.GroupMemberRequest, call: Call) -> pb.GroupMembership:
        changed = self._policies.add_member(call, request.group, request.identity)
        return pb.GroupMembership(group=request.group, identity=request.identity, changed=changed)

    def RemoveGroupMember(self, request: pb.GroupMemberRequest, call: Call) -> pb.GroupMembership:
        changed = self._policies.remove_member(call, request.group, request.identity)
        return pb.GroupMembership(group=request.group, identity=request.identity, changed=changed)

    def ListGroupMembers(self, request: pb.ListGroupMembersRequest, call: Call) -> pb.ListGroupMembersResponse:
        members = self._policies.members(call, request.group)
        return pb.ListGroupMembersResponse(members=[pb.GroupMembership(group=g, identity=i) for g, i in members])
