/**
 * The model actions the command palette offers (one `aidc:model-<action>` command each):
 * their names and labels only, so that the plugin can register the commands at start
 * without loading the Models section's code, which comes with the sidebar when it opens.
 */

/** What the command palette runs on a model, as the manager's buttons do. */
export type ModelAction = 'deploy' | 'alias' | 'canary' | 'promote' | 'rollback' | 'undeploy' | 'try';

/** The palette's label of each action (after "AI Data Center: "). */
export const MODEL_ACTION_LABELS: { [action in ModelAction]: string } = {
  deploy: 'Deploy Model…',
  alias: 'Set Model Alias…',
  canary: 'Set Model Canary…',
  promote: 'Promote Model Canary…',
  rollback: 'Roll Back Model…',
  undeploy: 'Undeploy Model…',
  try: 'Try Model…'
};
