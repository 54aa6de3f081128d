//! etcdserverpb.Auth: enabling auth, users, roles and their permissions, and tokens. Everything
//! but Authenticate needs the root role once auth is on; a user may read itself and the roles it
//! has (the rules are in [`crate::auth`]).

use super::Context;
use crate::proto::etcdserverpb::auth_server::Auth;
use crate::proto::etcdserverpb::*;
use tonic::{Request, Response, Status};

pub struct AuthService(pub(super) Context);

impl AuthService {
    /// That the sender has the root role, when auth is on, by the stored auth state (on a shared
    /// backend another frontend may have just turned auth on or taken the role away).
    async fn admin<T>(&self, req: &Request<T>) -> Result<(), Status> {
        self.0.auth.reload().await?;
        Ok(self.0.allow_admin(req.metadata()).await?)
    }

    /// A response with its header filled.
    fn answer<T>(
        &self,
        mut resp: T,
        header: impl FnOnce(&mut T) -> &mut Option<ResponseHeader>,
    ) -> Result<Response<T>, Status> {
        self.0.fill(header(&mut resp));
        Ok(Response::new(resp))
    }
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(
        &self,
        req: Request<AuthEnableRequest>,
    ) -> Result<Response<AuthEnableResponse>, Status> {
        self.admin(&req).await?;
        self.0.auth.enable().await?;
        self.answer(AuthEnableResponse::default(), |r| &mut r.header)
    }

    async fn auth_disable(
        &self,
        req: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        self.admin(&req).await?;
        self.0.auth.disable().await?;
        self.answer(AuthDisableResponse::default(), |r| &mut r.header)
    }

    async fn auth_status(
        &self,
        req: Request<AuthStatusRequest>,
    ) -> Result<Response<AuthStatusResponse>, Status> {
        self.admin(&req).await?;
        let (enabled, auth_revision) = self.0.auth.status();
        let resp = AuthStatusResponse {
            enabled,
            auth_revision,
            ..Default::default()
        };
        self.answer(resp, |r| &mut r.header)
    }

    async fn authenticate(
        &self,
        req: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        let req = req.into_inner();
        let token = self.0.auth.authenticate(&req.name, &req.password).await?;
        let resp = AuthenticateResponse {
            token,
            ..Default::default()
        };
        self.answer(resp, |r| &mut r.header)
    }

    async fn user_add(
        &self,
        req: Request<AuthUserAddRequest>,
    ) -> Result<Response<AuthUserAddResponse>, Status> {
        self.admin(&req).await?;
        let req = req.into_inner();
        self.0
            .auth
            .user_add(&req.name, &req.password, req.options)
            .await?;
        self.answer(AuthUserAddResponse::default(), |r| &mut r.header)
    }

    /// Root may read any user; a user may read itself.
    async fn user_get(
        &self,
        req: Request<AuthUserGetRequest>,
    ) -> Result<Response<AuthUserGetResponse>, Status> {
        let info = self.0.auth_info(req.metadata()).await?;
        let req = req.into_inner();
        let resp = AuthUserGetResponse {
            roles: self.0.auth.user_get(info.as_ref(), &req.name)?,
            ..Default::default()
        };
        self.answer(resp, |r| &mut r.header)
    }

    async fn user_list(
        &self,
        req: Request<AuthUserListRequest>,
    ) -> Result<Response<AuthUserListResponse>, Status> {
        self.admin(&req).await?;
        let resp = AuthUserListResponse {
            users: self.0.auth.user_list(),
            ..Default::default()
        };
        self.answer(resp, |r| &mut r.header)
    }

    async fn user_delete(
        &self,
        req: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        self.admin(&req).await?;
        self.0.auth.user_delete(&req.into_inner().name).await?;
        self.answer(AuthUserDeleteResponse::default(), |r| &mut r.header)
    }

    async fn user_change_password(
        &self,
        req: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        self.admin(&req).await?;
        let req = req.into_inner();
        self.0
            .auth
            .user_change_password(&req.name, &req.password, &req.hashed_password)
            .await?;
        self.answer(AuthUserChangePasswordResponse::default(), |r| &mut r.header)
    }

    async fn user_grant_role(
        &self,
        req: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        self.admin(&req).await?;
        let req = req.into_inner();
        self.0.auth.user_grant_role(&req.user, &req.role).await?;
        self.answer(AuthUserGrantRoleResponse::default(), |r| &mut r.header)
    }

    async fn user_revoke_role(
        &self,
        req: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        self.admin(&req).await?;
        let req = req.into_inner();
        self.0.auth.user_revoke_role(&req.name, &req.role).await?;
        self.answer(AuthUserRevokeRoleResponse::default(), |r| &mut r.header)
    }

    async fn role_add(
        &self,
        req: Request<AuthRoleAddRequest>,
    ) -> Result<Response<AuthRoleAddResponse>, Status> {
        self.admin(&req).await?;
        self.0.auth.role_add(&req.into_inner().name).await?;
        self.answer(AuthRoleAddResponse::default(), |r| &mut r.header)
    }

    /// Root may read any role; a user may read the roles it has.
    async fn role_get(
        &self,
        req: Request<AuthRoleGetRequest>,
    ) -> Result<Response<AuthRoleGetResponse>, Status> {
        let info = self.0.auth_info(req.metadata()).await?;
        let req = req.into_inner();
        let resp = AuthRoleGetResponse {
            perm: self.0.auth.role_get(info.as_ref(), &req.role)?,
            ..Default::default()
        };
        self.answer(resp, |r| &mut r.header)
    }

    async fn role_list(
        &self,
        req: Request<AuthRoleListRequest>,
    ) -> Result<Response<AuthRoleListResponse>, Status> {
        self.admin(&req).await?;
        let resp = AuthRoleListResponse {
            roles: self.0.auth.role_list(),
            ..Default::default()
        };
        self.answer(resp, |r| &mut r.header)
    }

    async fn role_delete(
        &self,
        req: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        self.admin(&req).await?;
        self.0.auth.role_delete(&req.into_inner().role).await?;
        self.answer(AuthRoleDeleteResponse::default(), |r| &mut r.header)
    }

    async fn role_grant_permission(
        &self,
        req: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        self.admin(&req).await?;
        let req = req.into_inner();
        self.0
            .auth
            .role_grant_permission(&req.name, req.perm)
            .await?;
        self.answer(AuthRoleGrantPermissionResponse::default(), |r| {
            &mut r.header
        })
    }

    async fn role_revoke_permission(
        &self,
        req: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        self.admin(&req).await?;
        let req = req.into_inner();
        self.0
            .auth
            .role_revoke_permission(&req.role, &req.key, &req.range_end)
            .await?;
        self.answer(AuthRoleRevokePermissionResponse::default(), |r| {
            &mut r.header
        })
    }
}
