//! Per-user settings (`/settings`, `/prefer suffix`): the defaults every job of that user
//! starts from. Written in portable SQL (numbered placeholders, `ON CONFLICT ... DO UPDATE`),
//! so the same statements run on SQLite and PostgreSQL.

use sqlx::Row;

use super::{now_ms, Store, StoreError};

/// The longest `/prefer suffix`, in characters.
pub const MAX_SUFFIX_CHARS: usize = 200;

/// `/settings`' stylize presets: how strongly the picture follows the prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StylizePreset {
    Raw,
    Low,
    Med,
    High,
}

impl StylizePreset {
    pub const ALL: [StylizePreset; 4] = [Self::Raw, Self::Low, Self::Med, Self::High];

    pub fn name(self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Low => "low",
            Self::Med => "med",
            Self::High => "high",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The `--stylize` value the preset stands for (guidance 2.3, 4.25, 7.5, 10.75).
    pub fn stylize(self) -> u32 {
        match self {
            Self::Raw => 20,
            Self::Low => 50,
            Self::Med => 100,
            Self::High => 150,
        }
    }
}

/// One user's defaults. `Default` is the bot's own: no preference anywhere.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserSettings {
    /// The model `/imagine` uses without `--model`.
    pub model: Option<String>,
    /// The stylize used without `--stylize`.
    pub stylize: Option<StylizePreset>,
    /// Buttons open a modal with the prompt first.
    pub remix: bool,
    /// V1-V4 vary less (Low Variation Mode).
    pub low_variation: bool,
    /// Appended to every prompt of `/imagine` and DM prompts.
    pub suffix: Option<String>,
}

impl Store {
    /// `user`'s settings; the defaults when they never changed any.
    pub async fn user_settings(&self, user: u64) -> Result<UserSettings, StoreError> {
        on_pool!(self, |pool, dialect| {
            let row = sqlx::query(
                "SELECT model, stylize, remix, variation, suffix FROM user_settings \
                 WHERE user_id = $1",
            )
            .bind(user.to_string())
            .fetch_optional(pool)
            .await?;
            let Some(row) = row else {
                return Ok(UserSettings::default());
            };
            let stylize: Option<String> = row.try_get("stylize")?;
            let variation: Option<String> = row.try_get("variation")?;
            Ok(UserSettings {
                model: row.try_get("model")?,
                // A value this version does not know reads as no preference.
                stylize: stylize.as_deref().and_then(StylizePreset::parse),
                remix: row.try_get::<bool, _>("remix")?,
                low_variation: variation.as_deref() == Some("low"),
                suffix: row.try_get("suffix")?,
            })
        })
    }

    /// Replaces `user`'s settings with `settings`.
    pub async fn save_user_settings(
        &self,
        user: u64,
        settings: &UserSettings,
    ) -> Result<(), StoreError> {
        let variation = if settings.low_variation {
            "low"
        } else {
            "high"
        };
        on_pool!(self, |pool, dialect| {
            sqlx::query(
                "INSERT INTO user_settings \
                     (user_id, model, stylize, remix, variation, suffix, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (user_id) DO UPDATE SET \
                     model = excluded.model, stylize = excluded.stylize, \
                     remix = excluded.remix, variation = excluded.variation, \
                     suffix = excluded.suffix, updated_at = excluded.updated_at",
            )
            .bind(user.to_string())
            .bind(settings.model.clone())
            .bind(settings.stylize.map(StylizePreset::name))
            .bind(settings.remix)
            .bind(variation)
            .bind(settings.suffix.clone())
            .bind(now_ms())
            .execute(pool)
            .await?;
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    on_both_backends!(settings_start_at_the_defaults_and_are_kept_per_user);

    async fn settings_start_at_the_defaults_and_are_kept_per_user(store: Store) {
        assert_eq!(
            store.user_settings(1).await.unwrap(),
            UserSettings::default()
        );
        let mine = UserSettings {
            model: Some("tiny".into()),
            stylize: Some(StylizePreset::Raw),
            remix: true,
            low_variation: true,
            suffix: Some("--ar 3:2".into()),
        };
        store.save_user_settings(1, &mine).await.unwrap();
        assert_eq!(store.user_settings(1).await.unwrap(), mine);
        assert_eq!(
            store.user_settings(2).await.unwrap(),
            UserSettings::default()
        );
        let changed = UserSettings {
            remix: false,
            suffix: None,
            ..mine
        };
        store.save_user_settings(1, &changed).await.unwrap();
        assert_eq!(store.user_settings(1).await.unwrap(), changed);
    }

    #[test]
    fn presets_read_back_by_name() {
        for preset in StylizePreset::ALL {
            assert_eq!(StylizePreset::parse(preset.name()), Some(preset));
        }
        assert_eq!(StylizePreset::parse("RAW"), None);
    }
}
