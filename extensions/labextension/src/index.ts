/**
 * aidc's JupyterLab extension: the "AI Data Center" sidebar in the left area, with a
 * command to open it, "Run as job" for the open notebook (a command and a button in every
 * notebook's toolbar), a command for each model action of the Models section (deploy,
 * alias, canary, promote, roll back, undeploy, try it), and its settings (refresh interval, a job's default GPUs) in the
 * settings editor.
 */
import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette, showErrorMessage } from '@jupyterlab/apputils';
import type { DocumentRegistry } from '@jupyterlab/docregistry';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { LabIcon, ToolbarButton } from '@jupyterlab/ui-components';
import { Widget } from '@lumino/widgets';

import iconSvg from '../style/icon.svg';
import type { ILabActions } from './jobs';
import { MODEL_ACTION_LABELS, ModelAction } from './modelactions';
import type { IModelActions } from './models';
import { AidcSidebar } from './sidebar';

const PLUGIN_ID = 'aidc:plugin';
const OPEN_COMMAND = 'aidc:open-sidebar';
const RUN_AS_JOB_COMMAND = 'aidc:run-as-job';
/** Where "Open output" puts a job's executed notebook, among my files. */
const OUTPUTS_FOLDER = 'job-outputs';

export const aidcIcon = new LabIcon({ name: 'aidc:data-center', svgstr: iconSvg });

/** The document context of a notebook in the main area, if `widget` shows one. */
function notebookContext(widget: Widget | null): DocumentRegistry.Context | null {
  const context = (widget as { context?: DocumentRegistry.Context } | null)?.context;
  return context && context.path.endsWith('.ipynb') ? context : null;
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'The AI Data Center sidebar: my GPUs, quota, queue place, jobs and models.',
  autoStart: true,
  optional: [ILayoutRestorer, ICommandPalette, ISettingRegistry],
  activate: (
    app: JupyterFrontEnd,
    restorer: ILayoutRestorer | null,
    palette: ICommandPalette | null,
    settings: ISettingRegistry | null
  ) => {
    const contents = app.serviceManager.contents;
    const actions: ILabActions & Pick<IModelActions, 'openPath'> = {
      openNotebook: async (path, content) => {
        await contents.get(OUTPUTS_FOLDER, { content: false }).catch(() =>
          contents.save(OUTPUTS_FOLDER, { type: 'directory' })
        );
        await contents.save(path, { type: 'notebook', format: 'json', content });
        await app.commands.execute('docmanager:open', { path });
      },
      openPath: path => void app.commands.execute('docmanager:open', { path })
    };
    const sidebar = new AidcSidebar(actions);
    sidebar.title.icon = aidcIcon;
    sidebar.title.caption = 'AI Data Center';
    app.shell.add(sidebar, 'left', { rank: 700 });
    restorer?.add(sidebar, 'aidc-sidebar');

    app.commands.addCommand(OPEN_COMMAND, {
      label: 'AI Data Center: Open Sidebar',
      execute: () => app.shell.activateById(sidebar.id)
    });
    palette?.addItem({ command: OPEN_COMMAND, category: 'AI Data Center' });

    // each model action: on the model open in the Models section, else on one the user picks
    for (const action of Object.keys(MODEL_ACTION_LABELS) as ModelAction[]) {
      const command = `aidc:model-${action}`;
      app.commands.addCommand(command, {
        label: `AI Data Center: ${MODEL_ACTION_LABELS[action]}`,
        caption: 'As the button of the model open in the Models section (asks which model when none is)',
        execute: async () => {
          app.shell.activateById(sidebar.id);
          try {
            await (await sidebar.models()).act(action);
          } catch (error) {
            await showErrorMessage('AI Data Center', (error as Error).message);
          }
        }
      });
      palette?.addItem({ command, category: 'AI Data Center' });
    }

    // the notebook last in front: the sidebar takes the focus when it is clicked
    let lastNotebook: DocumentRegistry.Context | null = null;
    const runAsJob = async (context: DocumentRegistry.Context | null) => {
      if (!context) {
        return;
      }
      if (context.model.dirty) {
        await context.save(); // the job runs the file as saved
      }
      app.shell.activateById(sidebar.id);
      await (await sidebar.jobs()).openForm(context.path);
    };
    app.commands.addCommand(RUN_AS_JOB_COMMAND, {
      label: 'AI Data Center: Run Notebook as Job…',
      caption: 'Run the open notebook on the platform as a job, with its parameters',
      isEnabled: () => !!(notebookContext(app.shell.currentWidget) || lastNotebook),
      execute: () => runAsJob(notebookContext(app.shell.currentWidget) || lastNotebook)
    });
    palette?.addItem({ command: RUN_AS_JOB_COMMAND, category: 'AI Data Center' });
    app.shell.currentChanged?.connect((_, change) => {
      lastNotebook = notebookContext(change.newValue) || lastNotebook;
    });

    app.docRegistry.addWidgetExtension('Notebook', {
      createNew: (panel: Widget & { toolbar?: any }, context: DocumentRegistry.Context) => {
        const button = new ToolbarButton({
          className: 'aidc-run-as-job',
          label: 'Run as job',
          tooltip: 'Run this notebook on the platform as a job (AI Data Center)',
          onClick: () => void runAsJob(context)
        });
        panel.toolbar?.insertItem(10, 'aidc-run-as-job', button);
        context.disposed.connect(() => {
          if (lastNotebook === context) {
            lastNotebook = null;
          }
        });
        return button;
      }
    });

    if (settings) {
      settings
        .load(PLUGIN_ID)
        .then(loaded => {
          const apply = () => {
            sidebar.refreshInterval = loaded.get('refreshInterval').composite as number;
            sidebar.defaultGPUs = loaded.get('defaultGPUs').composite as number;
          };
          apply();
          loaded.changed.connect(apply);
        })
        .catch(reason => console.error('aidc: cannot load its settings', reason));
    }
  }
};

export default plugin;
