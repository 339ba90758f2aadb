//! Where a request was made, as far as delivery cares: can the bot itself post there? In a
//! server that installed the bot, or the bot's own DM, it can. A user-installed app used in a
//! server without the bot, or in a group DM, can answer only through the interaction (15
//! minutes) and then by DM to the requester; posting in the channel fails with 403 (50001).

use poise::serenity_prelude::{
    AuthorizingIntegrationOwner, AuthorizingIntegrationOwners, GuildId, InteractionContext,
};

/// Whether the bot can post where the interaction happened, from what the interaction says.
/// Payloads without a context (older clients) are taken as before: a place the bot is in.
pub fn bot_in_place(
    context: Option<InteractionContext>,
    owners: &AuthorizingIntegrationOwners,
    guild: Option<GuildId>,
) -> bool {
    match context {
        Some(InteractionContext::BotDm) => true,
        Some(InteractionContext::PrivateChannel) => false,
        Some(InteractionContext::Guild) => {
            owners.0.is_empty()
                || owners.0.iter().any(|owner| {
                    matches!(owner, AuthorizingIntegrationOwner::GuildInstall(Some(g))
                        if Some(*g) == guild)
                })
        }
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use poise::serenity_prelude::UserId;

    #[test]
    fn only_a_server_that_installed_the_bot_or_its_dm_can_be_posted_to() {
        let guild = Some(GuildId::new(5));
        let by_guild =
            AuthorizingIntegrationOwners(vec![AuthorizingIntegrationOwner::GuildInstall(guild)]);
        let by_user = AuthorizingIntegrationOwners(vec![AuthorizingIntegrationOwner::UserInstall(
            UserId::new(7),
        )]);
        let ctx = Some;
        assert!(bot_in_place(
            ctx(InteractionContext::Guild),
            &by_guild,
            guild
        ));
        assert!(!bot_in_place(
            ctx(InteractionContext::Guild),
            &by_user,
            guild
        ));
        assert!(bot_in_place(ctx(InteractionContext::BotDm), &by_user, None));
        assert!(!bot_in_place(
            ctx(InteractionContext::PrivateChannel),
            &by_user,
            None
        ));
        assert!(bot_in_place(
            None,
            &AuthorizingIntegrationOwners(vec![]),
            guild
        ));
    }
}
