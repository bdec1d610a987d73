//! `tasuki-spoke login | logout | passwd | invite-device | approve-device`:
//! clients of the running daemon, which relays them to the hub.

use std::io::BufRead;
use std::path::Path;

use anyhow::{bail, Context, Result};
use tasuki_core::admin_api::{SpokeRequest, SpokeStatus};
use tasuki_core::api_error::{ApiError, ErrorCode};
use tasuki_core::control::{UserReply, UserRequest};
use zeroize::Zeroizing;

pub(crate) async fn call(socket: &Path, request: UserRequest) -> Result<UserReply> {
    tasuki_shell::local::request(socket, SpokeRequest::User { request }).await
}

/// Reads passwords: from the terminal, or lines of standard input.
struct Passwords {
    stdin: Option<std::vec::IntoIter<Zeroizing<String>>>,
}

impl Passwords {
    fn new(from_stdin: bool) -> Result<Self> {
        if !from_stdin {
            return Ok(Self { stdin: None });
        }
        let mut lines = Vec::new();
        for line in std::io::stdin().lock().lines() {
            lines.push(Zeroizing::new(line.context("cannot read standard input")?));
        }
        Ok(Self {
            stdin: Some(lines.into_iter()),
        })
    }

    fn next(&mut self, prompt: &str) -> Result<Zeroizing<String>> {
        match &mut self.stdin {
            Some(lines) => lines.next().with_context(|| {
                format!(
                    "standard input ended before: {}",
                    prompt.trim_end_matches(": ")
                )
            }),
            None => Ok(Zeroizing::new(
                rpassword::prompt_password(prompt)
                    .context("cannot read the password from the terminal")?,
            )),
        }
    }

    /// A new password, typed twice on a terminal.
    fn new_password(&mut self) -> Result<Zeroizing<String>> {
        let first = self.next("New password: ")?;
        if self.stdin.is_none() {
            let again = self.next("New password again: ")?;
            if *again != *first {
                bail!("the two new passwords differ");
            }
        }
        Ok(first)
    }
}

/// The one user logged in on this spoke, when none is named.
pub(crate) async fn only_user(socket: &Path, user: Option<String>) -> Result<String> {
    if let Some(u) = user {
        return Ok(u);
    }
    let s: SpokeStatus = tasuki_shell::local::request(socket, SpokeRequest::Status).await?;
    match s.users.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!("nobody is logged in on this spoke"),
        many => bail!(
            "several users are logged in ({}); name one",
            many.join(", ")
        ),
    }
}

pub(crate) async fn login(socket: &Path, user: String, stdin: bool) -> Result<()> {
    let mut pw = Passwords::new(stdin)?;
    let password = pw.next("Password: ")?;
    let first = call(
        socket,
        UserRequest::Login {
            user: user.clone(),
            password: password.clone(),
            new_password: None,
        },
    )
    .await;
    let reply = match first {
        Err(e)
            if e.downcast_ref::<ApiError>()
                .is_some_and(|e| e.code == ErrorCode::PasswordChangeRequired) =>
        {
            eprintln!("this is an initial password: choose a new one");
            let new = pw.new_password()?;
            call(
                socket,
                UserRequest::Login {
                    user: user.clone(),
                    password,
                    new_password: Some(new),
                },
            )
            .await?
        }
        other => other?,
    };
    if let UserReply::LoggedIn { user } = reply {
        println!("logged in as {user}");
    }
    Ok(())
}

/// Who asks for an account.
pub(crate) struct Profile {
    /// The login id asked for.
    pub(crate) user: String,
    /// Full name.
    pub(crate) name: String,
    /// E-mail address.
    pub(crate) email: String,
}

pub(crate) async fn register(socket: &Path, who: Profile, stdin: bool) -> Result<()> {
    let mut pw = Passwords::new(stdin)?;
    let password = pw.new_password()?;
    let request = UserRequest::Register {
        user: who.user,
        name: who.name,
        email: who.email,
        password,
    };
    if let UserReply::Registered { user } = call(socket, request).await? {
        println!("registration of {user:?} sent: it waits for an admin's approval");
        eprintln!("once approved: tasuki-spoke login {user}");
    }
    Ok(())
}

pub(crate) async fn logout(socket: &Path, user: Option<String>) -> Result<()> {
    let user = only_user(socket, user).await?;
    call(socket, UserRequest::Logout { user: user.clone() }).await?;
    println!("logged out {user}");
    Ok(())
}

pub(crate) async fn passwd(socket: &Path, user: String, stdin: bool) -> Result<()> {
    let mut pw = Passwords::new(stdin)?;
    let old = pw.next("Current password: ")?;
    let new = pw.new_password()?;
    call(socket, UserRequest::Passwd { user, old, new }).await?;
    println!("password changed");
    Ok(())
}

pub(crate) async fn invite_device(socket: &Path, user: Option<String>, name: String) -> Result<()> {
    let user = only_user(socket, user).await?;
    if let UserReply::DeviceInvitation { invitation } = call(
        socket,
        UserRequest::InviteDevice {
            user: user.clone(),
            name,
        },
    )
    .await?
    {
        println!("{invitation}");
        eprintln!(
            "on the new device: tasuki-spoke enrol <invitation> --as-user {user}; then confirm it here with tasuki-spoke approve-device"
        );
    }
    Ok(())
}

pub(crate) async fn approve_device(
    socket: &Path,
    user: Option<String>,
    name: Option<String>,
) -> Result<()> {
    let user = only_user(socket, user).await?;
    if let UserReply::DeviceApproved { name } =
        call(socket, UserRequest::ApproveDevice { user, name }).await?
    {
        println!("device {name:?} confirmed: it gets its keys now");
    }
    Ok(())
}
